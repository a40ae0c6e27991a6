# Shared by the scripts that reuse experiments/per_image.sh's run dir (sourced, after ROOT is
# set): its judges, the data overrides of each shape, and attackers copied from earlier
# evaluations' caches.
shopt -s nullglob  # a missing or empty attacker cache copies nothing
M=$ROOT/masks
JUDGES="task.disease_ckpt=$M/disease/checkpoints/best.pt task.identity_ckpt=$M/identity/checkpoints/best.pt task.siamese_ckpt=$M/siamese/checkpoints/best.pt"
data() {  # the data overrides of a shape: masks | no_masks | roi_masks (the file without masks,
          # its ROI derived by task=roi_masks: the file ROI_MASKS)
    case $1 in
        masks) echo "dataset.path=$ROOT/masks/synthesize/synthetic_iris.h5" ;;
        no_masks) echo "dataset.generator.masks=false dataset.path=$ROOT/no_masks/synthesize/synthetic_iris.h5" ;;
        roi_masks) echo "$(data no_masks) dataset.mask_path=${ROI_MASKS:?roi_masks needs ROI_MASKS, a task=roi_masks file}" ;;
        *) echo "per_image_lib.sh: unknown shape $1 (masks, no_masks, roi_masks)" >&2; return 1 ;;
    esac
}
seed_attackers() {  # run-dir cache-dir...: attackers of the caches that run-dir lacks, first wins
    local dir=$1 cache f
    shift
    mkdir -p "$dir/attackers"
    for cache in "$@"; do
        for f in "$cache"/*.pt; do [ -e "$dir/attackers/${f##*/}" ] || cp "$f" "$dir/attackers/"; done
    done
}
