"""Per-mitochondrion morphology in physical units: volume, surface, shape, extent; meshes.

Objects come from a binary mask by 3D connected components (:func:`instances`, small ones
removed by :func:`remove_small`).

Voxel sizes are given in nanometres, (Z, Y, X); every figure is returned in micrometres.

- **Volume** is the voxel count times the voxel volume (``regionprops`` with ``spacing``).
- **Surface** is the area of a marching-cubes mesh (``skimage.measure.marching_cubes`` with
  ``spacing``, ``mesh_surface_area``) of the object's mask after a light Gaussian blur, moved
  along its normals until it encloses the object's voxel volume (:func:`object_mesh`). A mesh of the
  raw binary mask follows the voxel staircase and overestimates a ball's surface by 8 %
  (isotropic voxels) to 20 % (slices 4x thicker than the pixels). The blur is
  :data:`SMOOTH_FRACTION` of the largest voxel side in physical units along every axis (at most
  :data:`SMOOTH_MAX_VOXELS` voxels), so a thick-sliced stack is smoothed across its terraces but
  never by more than two pixels in-plane. Checked on voxelised balls, ellipsoids, capsules and
  boxes at isotropic and anisotropic voxel sizes (``tests/test_core_morphology.py``): balls
  (down to 150 nm across, 5 slices) within 3 % of the exact area, ellipsoids and capsules within
  4.5 %; the blur rounds the sharp edges of a box, which loses about ``4 * sigma / side`` of its
  area (3 % for a 1 um box at 30 x 8 x 8 nm).
- **Axes** are the full lengths of the ellipsoid with the same second moments (``2 sqrt(5
  lambda)`` for each eigenvalue ``lambda`` of the covariance of the object's voxels, each voxel
  counted as a small uniform box, so thin objects are not shortened by a voxel): for a solid
  ellipsoid they are its diameters; for a box of side ``L`` they are ``1.29 L``.
- **Sphericity** is ``pi^(1/3) (6 V)^(2/3) / A``: 1 for a ball, lower for anything else.

Each object is measured on its own bounding box plus a margin, so thousands of objects cost
thousands of small crops, not thousands of passes over the volume.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ._atomic import atomic_dir, atomic_file, write_errors
from .labelling import instances, remove_small  # noqa: F401 - kept importable from morphology

logger = logging.getLogger(__name__)

#: Gaussian sigma before meshing, as a fraction of the largest voxel side (physical units)
SMOOTH_FRACTION = 0.6
#: ... but never more than this many voxels along an axis
SMOOTH_MAX_VOXELS = 2.0


class MeasureError(ValueError):
    """Bad input to a measurement (voxel size, labels); the message says what is expected."""


@dataclass(frozen=True)
class MitoMeasure:
    """One mitochondrion (3D object of a label volume). Lengths in um, surfaces in um^2,
    volumes in um^3; centroid in um from the centre of voxel (0, 0, 0)."""

    id: int
    voxels: int
    volume_um3: float
    surface_um2: float
    sphericity: float
    axis_major_um: float
    axis_medium_um: float
    axis_minor_um: float
    elongation: float  # major / medium axis: 1 for a ball or a disk, large for a tube
    flatness: float  # medium / minor axis: 1 for a ball or a tube, large for a disk
    z_extent_um: float
    slices: int
    z_first: int
    z_last: int
    centroid_z_um: float
    centroid_y_um: float
    centroid_x_um: float
    touches_border: bool


#: CSV column names, in order
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(MitoMeasure))


@dataclass(frozen=True)
class VolumeSummary:
    """All objects of one label volume together."""

    objects: int
    touching_border: int
    stack_volume_um3: float
    object_volume_um3: float
    volume_fraction: float
    density_per_um3: float
    mean_volume_um3: float
    median_volume_um3: float

    def as_dict(self) -> dict:
        return asdict(self)


def check_voxel_size(voxel_size) -> tuple[float, float, float]:
    """``(Z, Y, X)`` voxel size in nm as three positive finite floats, or :class:`MeasureError`."""
    try:
        vals = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError) as exc:
        raise MeasureError(f"voxel size must be three numbers in nm (Z Y X), got {voxel_size!r}") from exc
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise MeasureError(f"voxel size must be three positive numbers in nm (Z Y X), got {voxel_size!r}")
    return vals  # type: ignore[return-value]


def _as_labels(labels) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    if lab.ndim != 3:
        raise MeasureError(f"labels must be (Z, Y, X) or (Y, X), got shape {lab.shape}")
    if lab.dtype.kind not in "iub":
        raise MeasureError(f"labels must be integers (object ids), got {lab.dtype}")
    if lab.dtype.kind == "i" and lab.size and lab.min() < 0:
        raise MeasureError(f"labels hold negative ids (down to {int(lab.min())}); object ids are "
                           "> 0 and 0 is background")
    return lab


#: ids above this are renumbered 1..n while measuring (regionprops sizes its tables by the
#: largest id), and reported as they were
SPARSE_IDS = 1 << 24


def _compact_ids(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``lab`` with ids renumbered 1..n when its largest id exceeds :data:`SPARSE_IDS`, and the
    original id of each new one (index = new id); ``(lab, None)`` when no renumbering is needed."""
    if lab.size == 0 or int(lab.max()) <= SPARSE_IDS:
        return lab, None
    ids, inverse = np.unique(lab, return_inverse=True)
    if ids[0] != 0:
        ids, inverse = np.concatenate([[0], ids]), inverse + 1
    return inverse.reshape(lab.shape).astype(np.int32 if len(ids) < 2**31 else np.int64), ids


def smoothing_sigma(voxel_size_nm) -> tuple[float, float, float]:
    """Gaussian sigma, in voxels per axis, applied before meshing (see the module notes)."""
    vox = check_voxel_size(voxel_size_nm)
    biggest = max(vox)
    return tuple(min(SMOOTH_FRACTION * biggest / v, SMOOTH_MAX_VOXELS) for v in vox)  # type: ignore


def mesh_area_volume(verts: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    """Surface area and enclosed volume of a closed triangle mesh (units of ``verts``)."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * float(np.sqrt((np.cross(b - a, c - a) ** 2).sum(axis=1)).sum())
    volume = abs(float((a * np.cross(b, c)).sum())) / 6
    return area, volume


def object_mesh(mask: np.ndarray, voxel_size_nm, origin=(0, 0, 0)) -> tuple[np.ndarray, np.ndarray, float]:
    """Closed surface mesh of one object's (Z, Y, X) bool mask, and its area (um^2).

    Returns ``(verts, faces, area)``: verts (N, 3) float64 in um, (z, y, x) order, placed as if
    ``mask[0, 0, 0]`` were voxel ``origin`` of the volume; faces (M, 3) int. The mask is padded
    with background, so an object cut by the volume's border is closed along the cut.

    The mask is blurred (:func:`smoothing_sigma`) and meshed by marching cubes at level 0.5. A
    blur moves that level inwards where the surface curves (by about ``sigma^2 / R`` on a ball of
    radius ``R``: 6 % of the area of a 200 nm ball at 30 x 8 x 8 nm), so the vertices are then
    moved along their normals by ``(voxel volume - mesh volume) / area``, repeated until the
    mesh encloses the object's voxel volume (:func:`_hold_volume`; objects one or two slices
    thin need a few steps).
    """
    from scipy.ndimage import gaussian_filter
    from skimage.measure import marching_cubes

    vox = check_voxel_size(voxel_size_nm)
    sigma = smoothing_sigma(vox)
    pad = [int(math.ceil(3 * s)) + 1 for s in sigma]  # the blur's reach, plus one background voxel
    raw = np.pad(np.asarray(mask, np.float32), [(p, p) for p in pad])
    field = gaussian_filter(raw, sigma, mode="constant", truncate=3.0)
    spacing_um = tuple(v / 1000.0 for v in vox)
    if field.max() <= 0.55:  # too thin to survive the blur (a speck): mesh the raw mask
        verts, faces, _, _ = marching_cubes(raw, 0.5, spacing=spacing_um)
        area, _ = mesh_area_volume(verts, faces)
    else:
        verts, faces, normals, _ = marching_cubes(field, 0.5, spacing=spacing_um)
        target = float(raw.sum()) * float(np.prod(spacing_um))
        verts, area = _hold_volume(verts, faces, normals, target)
    verts += (np.asarray(origin, float) - np.asarray(pad)) * np.asarray(spacing_um)
    return verts, faces, area


def _hold_volume(verts, faces, normals, target: float, steps: int = 8) -> tuple[np.ndarray, float]:
    """Move the vertices along their normals until the mesh encloses ``target`` (within 0.2 %);
    returns the vertices and the mesh's area. One step of ``(target - volume) / area`` is enough
    for an object thicker than the blur; an object one or two slices thin, whose blurred rim
    bulges as it moves, needs a few (a single step left it 5-100 % too large)."""
    area, volume = mesh_area_volume(verts, faces)
    start, shift = verts, 0.0
    for _ in range(steps):
        if abs(target - volume) <= 0.002 * target or area <= 0:
            break
        shift += (target - volume) / area
        verts = start + normals * shift
        area, volume = mesh_area_volume(verts, faces)
    return verts, area


def _axes(inertia: np.ndarray, spacing_um) -> tuple[float, float, float]:
    """Full axis lengths (descending) of the ellipsoid with the object's second moments."""
    inertia = np.asarray(inertia, float)
    cov = np.trace(inertia) / 2 * np.eye(3) - inertia  # I = tr(C) Id - C
    cov += np.diag(np.asarray(spacing_um, float) ** 2 / 12)  # each voxel a uniform box
    lam = np.clip(np.sort(np.linalg.eigvalsh(cov))[::-1], 0, None)
    return tuple(float(2 * math.sqrt(5 * v)) for v in lam)  # type: ignore[return-value]


def iter_objects(labels, voxel_size_nm, ids: Iterable[int] | None = None,
                 surfaces: bool = True) -> Iterator[tuple[MitoMeasure, np.ndarray | None, np.ndarray | None]]:
    """Measure each object of a (Z, Y, X) label volume, one at a time.

    Yields ``(measure, verts, faces)`` per object in increasing id order (verts in um, (z, y, x),
    volume coordinates; None when ``surfaces`` is False, and then ``surface_um2`` and
    ``sphericity`` are NaN). ``ids`` restricts the work to those objects.
    """
    from skimage.measure import regionprops

    lab = _as_labels(labels)
    vox = check_voxel_size(voxel_size_nm)
    spacing_um = tuple(v / 1000.0 for v in vox)
    if ids is not None:
        wanted = np.asarray(sorted({int(i) for i in ids if int(i) > 0}), dtype=lab.dtype)
        lab = np.where(np.isin(lab, wanted), lab, 0)
    shape = lab.shape
    lab, original_ids = _compact_ids(lab)
    for r in regionprops(lab, spacing=spacing_um):
        z0, y0, x0, z1, y1, x1 = r.bbox
        volume = float(r.area)
        major, medium, minor = _axes(r.inertia_tensor, spacing_um)
        verts = faces = None
        surface = sphericity = float("nan")
        if surfaces:
            verts, faces, surface = object_mesh(r.image, vox, origin=(z0, y0, x0))
            sphericity = math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / surface if surface > 0 else float("nan")
        cz, cy, cx = r.centroid  # physical (spacing) units
        border = z0 == 0 or y0 == 0 or x0 == 0 or z1 == shape[0] or y1 == shape[1] or x1 == shape[2]
        m = MitoMeasure(
            id=int(r.label if original_ids is None else original_ids[r.label]), voxels=int(r.num_pixels),
            volume_um3=volume, surface_um2=surface,
            sphericity=sphericity, axis_major_um=major, axis_medium_um=medium, axis_minor_um=minor,
            elongation=major / medium if medium > 0 else float("inf"),
            flatness=medium / minor if minor > 0 else float("inf"),
            z_extent_um=(z1 - z0) * spacing_um[0], slices=int(z1 - z0), z_first=int(z0),
            z_last=int(z1 - 1), centroid_z_um=float(cz), centroid_y_um=float(cy),
            centroid_x_um=float(cx), touches_border=bool(border),
        )
        yield m, verts, faces


def measure(labels, voxel_size, ids: Iterable[int] | None = None,
            surfaces: bool = True) -> list[MitoMeasure]:
    """Per-object measurements of a (Z, Y, X) (or (Y, X)) integer label volume.

    ``voxel_size``: (Z, Y, X) in nm. ``ids``: only these objects. Returns one
    :class:`MitoMeasure` per object, by increasing id.
    """
    return [m for m, _, _ in iter_objects(labels, voxel_size, ids=ids, surfaces=surfaces)]


def summarize(rows: Iterable[MitoMeasure], shape, voxel_size) -> VolumeSummary:
    """Count, volume fraction, density (objects per um^3 of stack), mean and median volume."""
    rows = list(rows)
    vox = check_voxel_size(voxel_size)
    shape3 = tuple(shape) if len(shape) == 3 else (1, *shape)
    stack = float(np.prod(shape3)) * vox[0] * vox[1] * vox[2] / 1e9
    vols = np.array([r.volume_um3 for r in rows], float)
    total = float(vols.sum())
    return VolumeSummary(
        objects=len(rows), touching_border=sum(r.touches_border for r in rows),
        stack_volume_um3=stack, object_volume_um3=total,
        volume_fraction=total / stack if stack else 0.0,
        density_per_um3=len(rows) / stack if stack else 0.0,
        mean_volume_um3=float(vols.mean()) if len(vols) else 0.0,
        median_volume_um3=float(np.median(vols)) if len(vols) else 0.0,
    )


def write_csv(rows: Iterable[MitoMeasure], path: str | os.PathLike) -> Path:
    """Write measurements as CSV (header = :data:`COLUMNS`), atomically."""
    rows = list(rows)

    def write(tmp: Path) -> None:
        _csv_to(tmp, rows)

    return atomic_file(Path(path), write)


def _csv_to(path: Path, rows: list[MitoMeasure]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))


def mesh_path(folder: str | os.PathLike, obj_id: int) -> Path:
    """Where :func:`write_mesh` puts object ``obj_id``'s mesh in ``folder``."""
    return Path(folder) / f"mito_{int(obj_id):06d}.ply"


def write_mesh(path: str | os.PathLike, verts: np.ndarray, faces: np.ndarray) -> Path:
    """Write one mesh as binary PLY (trimesh), atomically, in um with (x, y, z) vertex order.

    ``verts`` are (z, y, x) in um as from :func:`object_mesh`; the axes are swapped so that
    Blender, MeshLab and ParaView see x, y, z (marching cubes winds its faces inward in (z, y, x);
    the swap, a mirror, turns their normals outward).
    """
    import trimesh

    mesh = trimesh.Trimesh(vertices=np.asarray(verts)[:, ::-1], faces=np.asarray(faces),
                           process=False)

    def write(tmp: Path) -> None:
        mesh.export(tmp, file_type="ply", encoding="binary")

    return atomic_file(Path(path), write)


def write_meshes(labels, voxel_size, folder: str | os.PathLike,
                 ids: Iterable[int] | None = None) -> list[Path]:
    """One PLY per object (``mito_<id>.ply``, um) in ``folder``; returns the paths.

    The meshes are written into a new folder beside ``folder`` that replaces it whole once all
    are written: no mesh of an earlier run is left among the new ones, and an interrupted run
    leaves the old folder as it was. ``folder`` must be new, empty or a folder of meshes
    (:func:`check_meshes_folder`)."""
    folder = check_meshes_folder(folder)
    names: list[str] = []

    def write(tmp: Path) -> None:
        names.extend(write_mesh(mesh_path(tmp, m.id), v, f).name
                     for m, v, f in iter_objects(labels, voxel_size, ids=ids))

    atomic_dir(folder, write)
    return [folder / n for n in names]


#: the files a meshes folder may hold: the meshes this module writes
MESH_FILE = re.compile(r"mito_\d+\.ply")


def check_meshes_folder(folder: str | os.PathLike) -> Path:
    """Raise :class:`MeasureError` when ``folder`` cannot take meshes: a file, unwritable, or a
    folder holding anything but meshes (it is replaced whole by the new meshes)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MeasureError(f"{folder} is a file; meshes need a folder")
    parent = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise MeasureError(f"cannot write meshes into {folder}: {parent} is not writable")
    if folder.is_dir():
        other = sorted(p.name for p in folder.iterdir() if not MESH_FILE.fullmatch(p.name))
        if other:
            raise MeasureError(f"{folder} holds files other than meshes ({', '.join(other[:3])}"
                               f"{', ...' if len(other) > 3 else ''}); the meshes replace the folder "
                               "whole: choose a new or empty folder")
    return folder


def is_mask(labels) -> bool:
    """Whether a label volume is a binary mask (no values but 0 and 1, or 0 and 255), not
    instance ids."""
    vals = np.unique(np.asarray(labels))
    vals = vals[vals != 0]
    return len(vals) == 0 or (len(vals) == 1 and int(vals[0]) in (1, 255))


@dataclass(frozen=True)
class MeasureResult:
    """What :func:`measure_file` did."""

    rows: list[MitoMeasure]
    summary: VolumeSummary
    voxel_size_nm: tuple[float, float, float]  # given, or read from the file
    split_mask: bool  # the input was a binary mask, split into 3D-connected objects
    table: Path
    meshes: list[Path]


def check_outputs(labels_path, table, meshes=None) -> tuple[Path, Path | None]:
    """Raise ``io.WriteError`` (or :class:`MeasureError`) unless ``table`` (CSV) and ``meshes``
    (folder) can be written without touching the input ``labels_path`` or each other."""
    from .io import check_not_input, check_writable_dir

    table = Path(table)
    if table.is_dir():
        raise MeasureError(f"{table} is a folder; give a file name for the table (.csv)")
    check_not_input(table, [labels_path], what="table")
    check_writable_dir(table.parent)
    if meshes is not None:
        meshes = Path(meshes)
        if table.resolve().is_relative_to(meshes.resolve()):
            raise MeasureError(f"the table {table} lies inside the meshes folder {meshes}, which new "
                               "meshes replace whole: put the table outside it")
        check_not_input(meshes, [labels_path], what="meshes folder", whole_folder=True)
        check_not_input(meshes, [table], what="meshes folder")
        check_meshes_folder(meshes)
        check_writable_dir(meshes)
    return table, meshes


def measure_file(labels_path, voxel_size, table, meshes=None, min_size: int = 64) -> MeasureResult:
    """Read a label volume (or binary mask: split into 3D objects of at least ``min_size``
    voxels), measure every object, write the CSV ``table`` and, with ``meshes``, one PLY per
    object into that folder. ``voxel_size`` (Z, Y, X) nm, or None: the one the file records.
    Inputs and outputs are checked before any work."""
    from .io import read_stack

    table, meshes = check_outputs(labels_path, table, meshes)
    if voxel_size is None:
        from .io import check_regular, read_voxel_size

        if not Path(labels_path).exists():
            raise FileNotFoundError(f"{labels_path} does not exist")
        check_regular(Path(labels_path))
        voxel_size = read_voxel_size(labels_path)
        if voxel_size is None:
            raise MeasureError(f"{labels_path} records no voxel size; give it with --voxel-size Z Y X (nm)")
    vox = check_voxel_size(voxel_size)
    lab = np.asarray(read_stack(labels_path))
    if lab.dtype.kind not in "iub":
        raise MeasureError(f"{labels_path} holds {lab.dtype} values; labels must be integers")
    lab = _check_label_volume(lab, labels_path)
    split_mask = is_mask(lab)
    if split_mask:
        lab = _split_mask(lab, min_size, labels_path)
    rows, written = _write_outputs(lab, vox, table, meshes)
    return MeasureResult(rows, summarize(rows, lab.shape, vox), vox, split_mask, table, written)


def _write_outputs(lab: np.ndarray, vox, table: Path, meshes: Path | None) -> tuple[list, list[Path]]:
    """Measure every object of ``lab``; the table and the meshes go to temporary names beside
    their places and move there only once all is written (the meshes folder first, the table
    last), so an interrupted run leaves the old outputs as they were."""
    rows: list[MitoMeasure] = []
    names: list[str] = []
    part = table.with_name(f".{table.name}.{uuid.uuid4().hex[:8]}.part")

    def write(mesh_dir: Path | None) -> None:
        for m, verts, faces in iter_objects(lab, vox):
            rows.append(m)
            if mesh_dir is not None:
                names.append(write_mesh(mesh_path(mesh_dir, m.id), verts, faces).name)
        atomic_file(part, lambda tmp: _csv_to(tmp, rows))  # complete, under a temporary name

    try:
        if meshes is None:
            write(None)
        else:
            atomic_dir(meshes, write)  # the new meshes replace the folder here
        with write_errors(table):
            os.replace(part, table)
    finally:
        part.unlink(missing_ok=True)
    return rows, [meshes / n for n in names] if meshes is not None else []


def _check_label_volume(lab: np.ndarray, source) -> np.ndarray:
    """``lab`` as (Z, Y, X) labels; :class:`MeasureError` for negative ids or a grey image (its
    neighbouring pixels mostly differ, which label regions do not)."""
    from .metrics import label_sample, looks_like_labels

    try:
        lab = _as_labels(lab)
    except MeasureError as exc:
        raise MeasureError(f"{source}: {exc}") from None
    if lab.dtype != bool and not looks_like_labels(label_sample(lab)):
        raise MeasureError(f"{source} looks like a grey image, not a label volume (its neighbouring "
                           "pixels mostly differ): give labels or a mask (0 background)")
    return lab


def _split_mask(mask: np.ndarray, min_size: int, source) -> np.ndarray:
    """A binary mask split into 3D-connected objects of at least ``min_size`` voxels, with a note
    saying so and how many smaller ones were dropped."""
    from skimage.measure import label

    _, found = label(np.asarray(mask) > 0, connectivity=1, return_num=True)
    lab = instances(mask, min_size=min_size)
    kept = int(lab.max()) if lab.size else 0
    dropped = f"; {found - kept} smaller than {min_size} voxels dropped (a minimum size of 0 keeps them)" \
        if found > kept else ""
    logger.info("%s holds one value besides 0: read as a binary mask and split into %d 3D-connected "
                "object(s)%s", source, kept, dropped, extra={"note": True})
    return lab
