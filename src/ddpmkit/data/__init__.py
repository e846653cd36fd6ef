"""Training data: generated demo faces, CelebA layouts, the prepare cache and the batch loader."""
