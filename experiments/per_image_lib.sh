# Shared by the scripts that reuse experiments/per_image.sh's run dir (sourced, after ROOT is
# set): its judges, the data overrides of each shape, and attackers copied from earlier
# evaluations' caches.
shopt -s nullglob  # a missing or empty attacker cache copies nothing
M=$ROOT/masks
JUDGES="task.disease_ckpt=$M/disease/checkpoints/best.pt task.identity_ckpt=$M/identity/checkpoints/best.pt task.siamese_ckpt=$M/siamese/checkpoints/best.pt"
data() {  # the data overrides of a shape: masks | no_masks
    if [ "$1" = masks ]; then echo "dataset.path=$ROOT/masks/synthesize/synthetic_iris.h5"
    else echo "dataset.generator.masks=false dataset.path=$ROOT/no_masks/synthesize/synthetic_iris.h5"; fi
}
seed_attackers() {  # run-dir cache-dir...: attackers of the caches that run-dir lacks, first wins
    local dir=$1 cache f
    shift
    mkdir -p "$dir/attackers"
    for cache in "$@"; do
        for f in "$cache"/*.pt; do [ -e "$dir/attackers/${f##*/}" ] || cp "$f" "$dir/attackers/"; done
    done
}
