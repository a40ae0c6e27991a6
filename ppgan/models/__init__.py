"""Networks: recognition CNNs (classifier, siamese), the VAE-GAN (encoder, decoder, critic)."""
