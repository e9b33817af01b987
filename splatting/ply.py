"""INRIA-layout PLY files (the format of the 3DGS reference code, read by common splat viewers).

Binary little-endian vertex elements with float properties x y z nx ny nz f_dc_0..2
f_rest_0..3(K-1)-1 (channel-major: all of R's higher-order coefficients, then G's, then B's), opacity
(logit), scale_0..2 (log), rot_0..3 (wxyz, unnormalized). Normals are written as zeros.

Frames: training happens in the loader's normalized world (``Scene.transform``: COLMAP -> normalized, a
similarity). ``save_ply(..., transform=scene.transform)`` writes the Gaussians in the capture's own COLMAP
frame (the similarity inverted: means, scales, rotations and view-dependent colour), so the PLY overlays the
COLMAP points and cameras in any viewer; ``load_ply(..., transform=scene.transform)`` applies it again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from splatting.gaussians import transform_gaussians

__all__ = ["save_ply", "load_ply", "PLYError"]


class PLYError(ValueError):
    """A PLY file is not a Gaussian splat file in INRIA layout."""


def save_ply(params: dict[str, Tensor], path: str | os.PathLike, transform: Tensor | None = None) -> dict:
    """Write the Gaussians to ``path``; rows with NaN/Inf in any attribute are dropped and counted.

    ``transform`` [4, 4] (the scene's normalization, COLMAP -> normalized): write in the COLMAP frame."""
    from plyfile import PlyData, PlyElement

    frame = "normalized"
    if transform is not None:
        params = transform_gaussians(params, torch.linalg.inv(transform.double()))
        frame = "colmap"

    means = params["means"].detach().cpu().float()
    n = means.shape[0]
    sh0 = params["sh0"].detach().cpu().float().reshape(n, 3)
    shn = params["shN"].detach().cpu().float()
    rest = shn.transpose(1, 2).reshape(n, -1)  # [N, 3 * (K - 1)] channel-major
    cols = [
        means,
        torch.zeros(n, 3),
        sh0,
        rest,
        params["opacities"].detach().cpu().float().reshape(n, 1),
        params["scales"].detach().cpu().float(),
        params["quats"].detach().cpu().float(),
    ]
    data = torch.cat(cols, dim=1).numpy()
    finite = np.isfinite(data).all(axis=1)
    dropped = int((~finite).sum())
    data = data[finite]
    names = (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(rest.shape[1])]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )
    arr = np.empty(data.shape[0], dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        arr[name] = data[:, i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    comments = [f"genai-train frame {frame}"]
    PlyData([PlyElement.describe(arr, "vertex")], byte_order="<", comments=comments).write(str(tmp))
    os.replace(tmp, path)
    return {"written": int(data.shape[0]), "dropped_nonfinite": dropped}


def load_ply(path: str | os.PathLike, transform: Tensor | None = None) -> dict[str, Tensor]:
    """Read an INRIA-layout PLY into gsplat-layout tensors (means, scales, quats, opacities, sh0, shN).

    ``transform`` [4, 4] (the scene's normalization): the file is in the COLMAP frame; move it into the
    normalized world the renderer and the scene's cameras use."""
    from plyfile import PlyData

    path = Path(path)
    if not path.exists():
        raise PLYError(f"{path} does not exist; pass a .ply written by `splat export` or the INRIA code")
    ply = PlyData.read(str(path))
    if "vertex" not in ply:
        raise PLYError(f"{path}: no 'vertex' element; not a Gaussian splat PLY")
    v = ply["vertex"]
    names = {p.name for p in v.properties}
    need = [
        "x",
        "y",
        "z",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]
    missing = [k for k in need if k not in names]
    if missing:
        raise PLYError(f"{path}: missing properties {missing}; expected the INRIA 3DGS layout")
    n_rest = len([k for k in names if k.startswith("f_rest_")])
    k_minus_1 = n_rest // 3
    if n_rest % 3 or math.isqrt(k_minus_1 + 1) ** 2 != k_minus_1 + 1:
        raise PLYError(f"{path}: {n_rest} f_rest properties is not 3 x ((d+1)^2 - 1) for an SH degree d")

    def col(*keys: str) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[k], dtype=np.float32) for k in keys], axis=-1))

    n = len(v["x"])
    rest = col(*[f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    out = {
        "means": col("x", "y", "z"),
        "scales": col("scale_0", "scale_1", "scale_2"),
        "quats": col("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacities": col("opacity")[:, 0],
        "sh0": col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        "shN": rest.reshape(n, 3, k_minus_1).transpose(1, 2).contiguous(),
    }
    return out if transform is None else transform_gaussians(out, transform)
