import numpy as np


def write_images(folder, n=8, size=(20, 24), seed=0):
    """n random RGB PNGs of size (h, w) in folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return folder
