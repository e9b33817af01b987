"""The similarity from a capture's COLMAP frame to the normalized world (as gsplat's COLMAP parser: cameras'
mean up -> +z, centred on the median focus point, median camera distance 1, points' principal axes aligned)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation taking unit vector a to unit vector b (Rodrigues)."""
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1 + 1e-10:  # opposite: rotate pi about any axis orthogonal to a
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def normalization_transform(c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Similarity [4, 4] that normalizes a capture like gsplat's COLMAP parser (see module docstring)."""
    up = (c2w[:, :3, :3] @ np.array([0.0, -1.0, 0.0])).mean(0)
    up /= max(np.linalg.norm(up), 1e-12)
    rot = _rotation_between(up, np.array([0.0, 0.0, 1.0]))
    centers = c2w[:, :3, 3] @ rot.T
    fwd = (rot @ c2w[:, :3, :3]) @ np.array([0.0, 0.0, 1.0])  # [C, 3]
    # point of each optical axis closest to the origin, median over cameras = the focus of the capture
    nearest = centers + ((-centers * fwd).sum(-1, keepdims=True)) * fwd
    shift = -np.median(nearest, axis=0)
    dist = np.median(np.linalg.norm(centers + shift, axis=-1))
    scale = 1.0 / max(dist, 1e-12)
    t1 = np.eye(4)
    t1[:3, :3] = scale * rot
    t1[:3, 3] = scale * shift
    if len(points) >= 3:  # align the point cloud's principal axes (largest variance -> x, smallest -> z)
        p = points @ t1[:3, :3].T + t1[:3, 3]
        center = np.median(p, axis=0)
        evals, evecs = np.linalg.eigh(np.cov((p - center).T))
        axes = evecs[:, ::-1]
        if np.linalg.det(axes) < 0:
            axes[:, 2] *= -1
        t2 = np.eye(4)
        t2[:3, :3] = axes.T
        t2[:3, 3] = -axes.T @ center
        z = (p @ t2[:3, :3].T + t2[:3, 3])[:, 2]
        if np.median(z) > np.mean(z):  # flip upside down so most points lie below the median
            flip = np.diag([1.0, -1.0, -1.0, 1.0])
            t2 = flip @ t2
        t1 = t2 @ t1
    return t1


def normalization_dict(transform: Tensor) -> dict:
    """Scale, rotation, translation and centre of a similarity [4, 4] (see :attr:`Scene.normalization`)."""
    t = transform.double()
    scale = float(torch.linalg.norm(t[:3, 0]))
    rot = t[:3, :3] / scale
    return {
        "scale": scale,
        "rotation": rot.tolist(),
        "translation": t[:3, 3].tolist(),
        "center": (-(rot.T @ t[:3, 3]) / scale).tolist(),
    }
