"""Brain tissue segmentation slices from nilearn's MNI152 (ICBM 2009a) T1 template (real MRI).

Labels: 0 background, 1 grey matter, 2 white matter (the larger of the GM/WM probability maps
where their sum is at least 0.5). nilearn ships one template with tissue maps, so both sites come
from the same head, cut along different planes (axial and coronal); they are not independent
subjects. Slices are grouped in slabs of neighbouring slices that never cross splits, and one
guard slice between slabs is dropped so no two slices of different splits touch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from unicon_core.config import TaskSpec
from unicon_core.data.readers import write_nifti
from unicon_core.data.splits import assign_splits

SOURCE = "nilearn datasets/data mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz"
#: Site name -> axis the slices are cut along (0 sagittal, 1 coronal, 2 axial).
PLANES: dict[str, int] = {"brain_axial": 2, "brain_coronal": 1}


def tissue_task() -> TaskSpec:
    """``tissue_seg`` as ``configs/task/tissue_seg.yaml`` declares it: 2D MRI slices, 3 labels
    (background, GM, WM)."""
    from unicon_core.hydra_config import task_file_spec

    return task_file_spec("tissue_seg")


def _template_paths() -> dict[str, Path]:
    import nilearn

    root = Path(os.path.dirname(nilearn.__file__)) / "datasets" / "data"
    return {
        k: root / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")
    }


def load_template(size: int, depth: int, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 and label volumes with the slicing ``axis`` moved last, cropped to the head, padded
    square in-plane and resized to ``(size, size, depth)``; plus the matching affine."""
    import nibabel as nib
    from monai.transforms import Resize

    imgs = {k: nib.load(str(p)) for k, p in _template_paths().items()}
    vols = {k: np.asarray(im.dataobj, dtype=np.float32) for k, im in imgs.items()}
    affine = np.asarray(imgs["t1"].affine, dtype=np.float64)
    head = (vols["t1"] > 0) | (vols["gm"] > 0) | (vols["wm"] > 0)
    lo = [
        int(np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != d))).min())
        for d in range(3)
    ]
    hi = [
        int(np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != d))).max()) + 1
        for d in range(3)
    ]
    order = [a for a in range(3) if a != axis] + [axis]
    extent = [hi[d] - lo[d] for d in order]
    side = max(extent[:2])
    # start index of the crop in original voxels per (reordered) axis, padding centred in-plane
    start = [lo[d] - (side - extent[i]) // 2 if i < 2 else lo[d] for i, d in enumerate(order)]
    box = [side, side, extent[2]]
    stack = []
    for key in ("t1", "gm", "wm"):
        vol = np.transpose(vols[key], order)
        out = np.zeros(box, dtype=np.float32)
        src = [
            slice(max(s, 0), min(s + b, vol.shape[i]))
            for i, (s, b) in enumerate(zip(start, box, strict=True))
        ]
        dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True)]
        out[tuple(dst)] = vol[tuple(src)]
        stack.append(out)
    resized = np.asarray(Resize((size, size, depth), mode="trilinear")(np.stack(stack)))
    t1, gm, wm = resized[0], resized[1] / 255.0, resized[2] / 255.0
    labels = np.where(gm + wm < 0.5, 0, np.where(gm >= wm, 1, 2)).astype(np.uint8)
    scale = np.array(box, dtype=np.float64) / np.array([size, size, depth])
    perm = np.zeros((4, 4))
    for new, old in enumerate(order):
        perm[old, new] = 1.0
    perm[3, 3] = 1.0
    # new voxel v -> reordered old voxel start + (v + 0.5) * scale - 0.5 -> original voxel
    local = np.diag([*scale.tolist(), 1.0])
    local[:3, 3] = np.array(start, dtype=np.float64) + 0.5 * scale - 0.5
    return t1, labels, affine @ perm @ local


def write_tissue_slices(
    site_dir: Path,
    site: str,
    axis: int,
    size: int = 64,
    depth: int = 128,
    slab: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Write the head's slices along ``axis`` as 2D NIfTI images/masks; return manifest rows."""
    t1, labels, affine = load_template(size, depth, axis)
    keep = [k for k in range(depth) if (labels[..., k] > 0).mean() >= 0.02 and k % slab != slab - 1]
    slabs = [f"{site}_slab{k // slab:02d}" for k in keep]
    splits = assign_splits(slabs, seed=seed)
    rows = []
    for k, group, split in zip(keep, slabs, splits, strict=True):
        shift = np.eye(4)
        shift[2, 3] = k
        aff = affine @ shift
        sid = f"{site}_{k:03d}"
        row = {
            "id": sid,
            "patient_id": group,
            "split": split,
            "image": f"images/{sid}.nii.gz",
            "mask": f"masks/{sid}.nii.gz",
            "meta_slice_index": k,
        }
        write_nifti(site_dir / row["image"], t1[..., k], aff)
        write_nifti(site_dir / row["mask"], labels[..., k], aff, dtype="uint8")
        rows.append(row)
    return rows
