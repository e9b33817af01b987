import pytest
import torch

from diffusion.patches import (
    PatchConfig,
    batch_multiplier,
    coord_grid,
    draw_patch_size,
    mean_batch_multiplier,
    patch_choices,
    random_crops,
)


def test_coordinate_channels_equal_closed_form_for_known_crop():
    r, p, top, left = 16, 4, 5, 9
    full = coord_grid(r, r, r)  # [2, R, R]
    crop = full[:, top : top + p, left : left + p]
    for i in range(p):
        for j in range(p):
            assert crop[0, i, j].item() == pytest.approx((left + j) / (r - 1) * 2 - 1, abs=1e-6)  # x = column
            assert crop[1, i, j].item() == pytest.approx((top + i) / (r - 1) * 2 - 1, abs=1e-6)  # y = row
    assert full[0, 0, 0] == -1 and full[0, 0, -1] == pytest.approx(1) and full[1, -1, 0] == pytest.approx(1)
    # a larger canvas extends the same grid past [-1, 1] (extrapolation)
    big = coord_grid(2 * r, 2 * r, r)
    assert torch.allclose(big[:, :r, :r], full) and big[0, 0, -1] > 1


def test_crops_and_coordinates_stay_aligned():
    r, b = 16, 6
    grid = coord_grid(r, r, r)
    # images whose pixels ARE their coordinates: any misalignment shows as a mismatch
    images = torch.cat([grid, grid[:1] * grid[1:]], 0).expand(b, 3, r, r).clone()
    images[1::2] = images[1::2] * 3 + 1  # samples differ, so a batch mix-up would also show
    g = torch.Generator().manual_seed(0)
    for p in (4, 8, 16):
        patches, pos, offsets = random_crops(images, p, g)
        assert patches.shape == (b, 3, p, p) and pos.shape == (b, 2, p, p)
        for k in range(b):
            top, left = offsets[k].tolist()
            assert torch.equal(patches[k], images[k, :, top : top + p, left : left + p])
            assert torch.equal(pos[k], grid[:, top : top + p, left : left + p])
        if p == r:
            assert (offsets == 0).all()
    assert len({tuple(o) for o in random_crops(images, 4, g)[2].tolist()}) > 1  # offsets differ per sample


def test_patch_schedule_probabilities_and_batch_multiplier():
    assert patch_choices(64, 0.5) == [(16, pytest.approx(0.2)), (32, pytest.approx(0.3)), (64, 0.5)]
    assert patch_choices(64, 1.0) == [(64, 1.0)]
    assert [batch_multiplier(32, s) for s in (8, 16, 32)] == [4, 2, 1]  # defined at R=32 (official KeyErrors)
    assert mean_batch_multiplier(64, PatchConfig(p=0.5)) == pytest.approx(1.9)
    g = torch.Generator().manual_seed(0)
    draws = [draw_patch_size(64, PatchConfig(p=0.5), g, 0.0) for _ in range(4000)]
    assert [draws.count(s) / 4000 for s in (16, 32, 64)] == pytest.approx([0.2, 0.3, 0.5], abs=0.03)
    prog = PatchConfig(p=0.5, schedule="progressive")
    assert [draw_patch_size(64, prog, g, t) for t in (0.1, 0.3, 0.9)] == [16, 32, 64]
    with pytest.raises(ValueError, match="not divisible by 4"):
        patch_choices(30, 0.5)
