"""DeepLabCut projects: `CollectedData_<scorer>.csv` tables of body-part points, no boxes.

A table has header rows `scorer`, `individuals` (multi-animal projects only), `bodyparts`
and `coords` (`x`, `y`, and `likelihood` in machine-made tables, ignored), then one row
per frame: its path (`labeled-data/<video>/<frame>.png` in one cell, or in three cells in
newer projects), then the coordinates in pixels, empty (or NaN) where a part was not
labeled. Each individual of a frame with a labeled point is one object; DeepLabCut's
`uniquebodyparts` (individual `single`) are points like the others. The frame is the file of
that name beside the table (DeepLabCut keeps them together).

The same table as pandas HDF5 (`CollectedData_<scorer>.h5`) needs PyTables, which poseops
does not install: the CSV beside it is read instead, and an `.h5` alone is refused with
how to get the CSV.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from poseops.conversion.poses import MISSING, Pose
from poseops.importing.labeled import DatasetError, LabeledImage, LabeledSet, OutsideImage, Skip, image_size, keypoint

FORMAT = "dlc"
CLASS = ""  # DeepLabCut has no classes: the points map onto one class of the skeleton (see poseops.importing.names)
HEADERS = ("scorer", "individuals", "bodyparts", "coords")
NO_BOX = (0.0, 0.0, 0.0, 0.0)  # points only: the box is derived from them when the set is mapped onto a skeleton


@dataclass(frozen=True)
class _Table:
    source: Path
    bodyparts: tuple[str, ...]  # in the order of first appearance
    columns: dict[tuple[str, str], tuple[int, int]]  # (individual, body part) -> (x column, y column)
    index_columns: int
    rows: list[tuple[int, list[str]]]  # (line number, cells) per frame


def find_tables(path: Path) -> list[Path]:
    """The CSV tables under a project (or labeled-data) folder, or the file given; an .h5 alone is refused."""
    if path.is_file():
        tables = [path]
    elif path.is_dir():
        tables = sorted(path.rglob("CollectedData_*.csv"))
        csv_stems = {p.with_suffix("") for p in tables}
        tables += [p for p in sorted(path.rglob("CollectedData_*.h5")) if p.with_suffix("") not in csv_stems]
    else:
        raise DatasetError(f"{path}: no such file or folder")
    if not tables:
        raise DatasetError(f"{path}: no CollectedData_*.csv (DeepLabCut's labels, in labeled-data/<video>/)")
    for table in tables:
        if table.suffix.lower() == ".h5" and not table.with_suffix(".csv").is_file():
            raise DatasetError(f"{table}: DeepLabCut's HDF5 table needs PyTables, which poseops does not install; "
                               f"import the CSV of the same labels instead ({table.with_suffix('.csv').name}: DeepLabCut "
                               "writes it beside the .h5 whenever labels are saved; where PyTables is installed, "
                               f"`python -c \"import pandas; pandas.read_hdf('{table.name}').to_csv("
                               f"'{table.with_suffix('.csv').name}')\"` writes it)")
    return [t.with_suffix(".csv") if t.suffix.lower() == ".h5" else t for t in tables]


def read_dlc_set(path: str | Path) -> LabeledSet:
    """Every labeled frame of a DeepLabCut project, folder of one video, or table; the rest in `skipped`."""
    labeled = LabeledSet(FORMAT, {}, has_boxes=False)
    for source in find_tables(Path(path)):
        table = _read_table(source)
        parts = labeled.schema.setdefault(CLASS, table.bodyparts)
        if parts != table.bodyparts:
            raise DatasetError(f"{source}: body parts {list(table.bodyparts)} differ from those of the tables read "
                               f"before ({list(parts)}); import each project on its own")
        for n, row in table.rows:
            _frame(table, row, n, labeled)
    return labeled


def _read_table(source: Path) -> _Table:
    try:
        with open(source, newline="", encoding="utf-8") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), 1) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{source}: cannot be read as a CSV file ({e})") from None
    header = {}
    while rows and rows[0][1][0].strip().lower() in HEADERS and len(header) < len(HEADERS):
        _, row = rows.pop(0)
        header[row[0].strip().lower()] = row
    if "bodyparts" not in header or "coords" not in header:
        raise DatasetError(f"{source}: not a DeepLabCut table: its first rows must be scorer, (individuals,) bodyparts "
                           "and coords")
    coords = header["coords"]
    index_columns = next((i for i in range(1, len(coords)) if coords[i].strip()), len(coords))
    individuals = header.get("individuals")
    columns: dict[tuple[str, str], dict[str, int]] = {}
    bodyparts: list[str] = []
    for c in range(index_columns, len(coords)):
        part = header["bodyparts"][c].strip() if c < len(header["bodyparts"]) else ""
        who = individuals[c].strip() if individuals and c < len(individuals) else ""
        if not part:
            raise DatasetError(f"{source}: column {c + 1} has no body part name")
        columns.setdefault((who, part), {})[coords[c].strip().lower()] = c
        if part not in bodyparts:
            bodyparts.append(part)
    xy = {}
    for key, cols in columns.items():
        if "x" not in cols or "y" not in cols:
            raise DatasetError(f"{source}: body part {key[1]!r}{f' of {key[0]!r}' if key[0] else ''} has no x and y columns")
        xy[key] = (cols["x"], cols["y"])
    return _Table(source, tuple(bodyparts), xy, index_columns, rows)


def _frame(table: _Table, row: list[str], n: int, labeled: LabeledSet) -> None:
    """Add row `n` of the table (a frame) to `labeled`, or a Skip saying why it is not."""
    relative = "/".join(cell.strip().replace("\\", "/") for cell in row[:table.index_columns] if cell.strip())
    name = f"{table.source.parent.name}/{Path(relative).name}" if relative else f"{table.source.name}:{n}"
    image = table.source.parent / Path(relative).name
    if not relative or not image.is_file():
        labeled.skipped.append(Skip(name, "missing_image", f"{table.source}:{n} names {relative!r}, which is not beside "
                                    "the table"))
        return
    try:
        width, height = image_size(image)
    except ValueError as e:
        labeled.skipped.append(Skip(name, "unreadable_image", f"{image}: {e}"))
        return
    individuals: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        for (who, part), (cx, cy) in table.columns.items():
            x, y = _number(row, cx, table.source, n), _number(row, cy, table.source, n)
            if x is None and y is None:
                continue
            if x is None or y is None:
                raise OutsideImage(f"{part}{f' of {who}' if who else ''} has only one of x and y")
            kp = keypoint(x, y, 2, width, height, f"{part}{f' of {who}' if who else ''}")
            individuals.setdefault(who, {})[part] = kp[:2]
    except OutsideImage as e:
        labeled.skipped.append(Skip(name, "outside_image", f"{table.source}:{n}: {e}; fix the label in DeepLabCut, "
                                    "then import again"))
        return
    if not individuals:
        labeled.skipped.append(Skip(name, "nothing_labeled", "no labeled point in this frame: not imported (upload it "
                                    "with `poseops dataset upload` to label it)"))
        return
    poses = [Pose(CLASS, NO_BOX, tuple((*points[p], 2) if p in points else MISSING for p in table.bodyparts))
             for points in individuals.values()]
    labeled.images.append(LabeledImage(image.name, width, height, poses, image))


def _number(row: list[str], column: int, source: Path, n: int) -> float | None:
    cell = row[column].strip() if column < len(row) else ""
    if cell == "" or cell.lower() == "nan":
        return None
    try:
        value = float(cell)
    except ValueError:
        raise DatasetError(f"{source}:{n}: column {column + 1} holds {cell!r}, not a number") from None
    if not math.isfinite(value):
        raise OutsideImage(f"column {column + 1} holds {cell!r}")
    return value
