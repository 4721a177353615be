"""The ``labels`` verbs: labels from another QA system in, the line's labels out (docs/design.md, "Labels").

Both go through :class:`~ear_stream.io.labels.LabelStore`, the store the review station writes, so an
imported label counts exactly like a click on the page (the latest decision per id wins). An import is
all or nothing: every row is checked first, each bad one gets a line, and only a file without one (or
``--skip-bad``) is written, as one atomic label part.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

if TYPE_CHECKING:
    from ..io.labels import Label, Mask

#: the CSV's columns, in the order ``labels export`` writes them; ``mask`` may be left out on import
CSV_COLUMNS = ("id", "label", "mask")
#: the folder ``labels export --out FILE.csv`` writes the masks to, next to the CSV: ``FILE-masks/``
MASKS_SUFFIX = "-masks"


@click.group()
def labels() -> None:
    """Labels in and out: import what another QA system confirmed, export what the line's people did.

    The CSV has a header and one row per item: id,label[,mask]. `id` names the image (a path under
    --images, e.g. crack/017.png), `label` is defect or good, and `mask`, optional and only for a
    defect, is a PNG of the defect's region (white on black, or a stroke on a transparent layer;
    thresholded at grey 128), its path relative to the CSV.

    \b
    id,label,mask
    crack/017.png,defect,masks/crack_017.png
    good/003.png,good,

    \b
    ear-stream labels import qa-week12.csv --labels out-labels --product tile --images /data/tile
    ear-stream labels import qa-week12.csv --labels out-labels --product tile --dry-run
    ear-stream labels export --labels out-labels --product tile --out tile-labels.csv

    The labels folder is the review station's (`review --labels`, default RESULTS-labels): imported
    labels and clicks on the page are one set, the latest decision per id counting.
    """


@dataclass
class Checked:
    """What the rows of a CSV say: the good ones ready to store, and a reason for each bad one."""

    labels: list[Label] = field(default_factory=list)
    masks: list[Mask | None] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (row number in the file, why)
    ignored_columns: list[str] = field(default_factory=list)


def check_csv(path: Path, product: str, images: Path | None, reviewer: str, max_pixels: int | None = None) -> Checked:
    """Read and check every row of a label CSV; nothing is stored here.

    Row numbers are the file's line numbers (the header is row 1), so a person finds each bad row in
    any editor or spreadsheet.
    """
    from ..errors import ConfigError
    from ..io.labels import LABELS, Label
    from ..io.limits import DEFAULT_MAX_PIXELS

    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's UTF-8 starts with a BOM
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc}): save it as CSV UTF-8") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [name for name in CSV_COLUMNS[:2] if name not in header]
    if missing:
        raise ConfigError(f"{path} needs a header with columns id,label[,mask]; it has none named {', '.join(missing)}")
    checked = Checked(ignored_columns=[name for name in header if name not in CSV_COLUMNS])
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    seen: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
                continue  # a blank line
            ident = (row.get("id") or "").strip()
            label = (row.get("label") or "").strip().lower()
            mask_path = (row.get("mask") or "").strip()
            reasons = []
            if not ident:
                reasons.append("no id")
            elif ident in seen:
                reasons.append(f"id {ident!r} is also on row {seen[ident]}")
            else:
                seen[ident] = line
            if label not in LABELS:
                reasons.append(f"label is {' or '.join(LABELS)}, got {row.get('label')!r}")
            size = _image_size(images, ident, reasons) if images is not None and ident else None
            mask = None
            if mask_path:
                if label == "good":
                    reasons.append("a mask marks a defect's region; this row is labelled good")
                mask = _mask(path.parent / mask_path, mask_path, size, limit, reasons)
            if reasons:
                checked.bad.append((line, "; ".join(reasons)))
                continue
            checked.labels.append(Label(product=product, id=ident, label=label, reviewer=reviewer))
            checked.masks.append(mask)
    except csv.Error as exc:
        raise ConfigError(f"{path}, row {reader.line_num}: not a CSV row ({exc})") from exc
    return checked


def _image_size(images: Path, ident: str, reasons: list[str]) -> tuple[int, int] | None:
    """(width, height) of the image ``ident`` names under ``images``; a reason when there is none."""
    from PIL import Image, UnidentifiedImageError

    from ..io.decode import ALLOWED_FORMATS

    root = images.resolve()
    path = (root / ident).resolve()
    if not path.is_relative_to(root):
        reasons.append(f"id {ident!r} points outside --images")
        return None
    if not path.is_file():
        reasons.append(f"no image {ident!r} under {images}")
        return None
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        reasons.append(f"{ident!r} is not a {', '.join(ALLOWED_FORMATS)} image ({exc})")
        return None


def _mask(
    path: Path, named: str, image_size: tuple[int, int] | None, max_pixels: int, reasons: list[str]
) -> Mask | None:
    """The row's mask, checked (a PNG, within the limits, marking something, the image's size)."""
    from ..errors import ConfigError
    from ..io.labels import MAX_MASK_BYTES, Mask

    if not path.is_file():
        reasons.append(f"no mask file {named!r} (paths are relative to the CSV's folder)")
        return None
    if path.stat().st_size > MAX_MASK_BYTES:
        reasons.append(f"mask {named!r} is larger than {MAX_MASK_BYTES} bytes")
        return None
    try:
        mask = Mask.from_png(path.read_bytes(), max_pixels)
    except ConfigError as exc:
        reasons.append(f"mask {named!r}: {exc}")
        return None
    if image_size is not None and (mask.width, mask.height) != image_size:
        reasons.append(f"mask {named!r} is {mask.width}x{mask.height}, the image is {image_size[0]}x{image_size[1]}")
        return None
    return mask


@labels.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--labels",
    "labels_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The label store (the review station's --labels folder, default RESULTS-labels).",
)
@click.option("--product", required=True, help="The product every row is about.")
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The product's image folder (the one `refine --images` will read): every id must name a readable "
    "image under it, and every mask must have that image's size.",
)
@click.option("--skip-bad", is_flag=True, help="Import the good rows even when some are bad (each still gets a line).")
@click.option("--dry-run", is_flag=True, help="Check every row and say what would be imported; write nothing.")
@click.option("--reviewer", default=None, help="Name stored with every label. Default: the login name.")
def import_cmd(
    csv_file: Path,
    labels_dir: Path,
    product: str,
    images: Path | None,
    skip_bad: bool,
    dry_run: bool,
    reviewer: str | None,
) -> None:
    """Import labels from a CSV (id,label[,mask]) into the label store, all rows or none.

    Every row is checked before anything is written: a bad row (unknown label, a duplicate id, an id with
    no image under --images, a mask that is missing, not a PNG, empty, of another size, or on a good label)
    gets one line `FILE, row N: why` on stderr, and then nothing is written (exit status 1) unless
    --skip-bad. The rows are stored as one atomic part: an interrupted import leaves no label behind.

    \b
    ear-stream labels import qa.csv --labels out-labels --product tile --images /data/tile
    ear-stream labels import qa.csv --labels out-labels --product tile --dry-run
    ear-stream labels import qa.csv --labels out-labels --product tile --skip-bad
    """
    from ..io.labels import LabelStore, check_product
    from ..review.config import login_name

    check_product(product)
    store = LabelStore(labels_dir)
    checked = check_csv(csv_file, product, images, reviewer or login_name())
    if checked.ignored_columns:
        click.echo(f"{csv_file}: ignoring columns {', '.join(checked.ignored_columns)}", err=True)
    for line, why in checked.bad:
        click.echo(f"{csv_file}, row {line}: {why}", err=True)
    good, bad = len(checked.labels), len(checked.bad)
    if bad and not skip_bad:
        fix = f"fix them, or --skip-bad to import the other {good}" if good else "fix them"
        raise click.ClickException(f"{bad} of {good + bad} rows are bad: nothing written ({fix})")
    if not good:
        raise click.ClickException(f"no label to import in {csv_file}")
    defects = sum(label.label == "defect" for label in checked.labels)
    masked = sum(mask is not None for mask in checked.masks)
    earlier = {r["id"] for r in store.read(product).to_pylist()}
    replaced = sum(label.id in earlier for label in checked.labels)
    summary = (
        f"{good} label{'s' * (good != 1)} of {product} ({defects} defect, {good - defects} good, {masked} with a mask"
        + (f"; {replaced} replacing earlier labels" if replaced else "")
        + (f"; {bad} bad rows skipped" if bad else "")
        + ")"
    )
    if dry_run:
        click.echo(f"would import {summary}; nothing written (--dry-run)")
        return
    part = store.add_many(checked.labels, checked.masks)
    click.echo(f"imported {summary} into {part}")


@labels.command("export")
@click.option(
    "--labels",
    "labels_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The label store (the review station's --labels folder).",
)
@click.option("--product", required=True, help="The product whose labels are exported.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"The CSV to write (replaced atomically); masks go to OUT's name + {MASKS_SUFFIX}/ next to it.",
)
def export_cmd(labels_dir: Path, product: str, out: Path) -> None:
    """Export a product's labels, the latest per id, as the CSV `labels import` reads (id,label,mask).

    Masks are written as PNG files (255 in the defect, 0 elsewhere) to FILE-masks/ next to the CSV,
    named by their sha256, and the mask column holds their paths relative to the CSV: importing the
    file elsewhere gives the same labels and masks.

    \b
    ear-stream labels export --labels out-labels --product tile --out tile-labels.csv
    """
    import hashlib

    from ..errors import ConfigError
    from ..io.labels import LabelStore, Mask, check_product
    from ..io.results import write_file_atomic

    check_product(product)
    store = LabelStore(labels_dir)
    rows = sorted(store.read(product, masks=True).to_pylist(), key=lambda r: r["id"])
    if not rows:
        present = sorted({r["product"] for r in store.read().to_pylist()})
        raise ConfigError(
            f"no labels of product {product!r} in {labels_dir}"
            + (f" (products there: {', '.join(present)})" if present else " (it holds no labels)")
        )
    masks_dir = out.parent / f"{out.stem}{MASKS_SUFFIX}"
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n_masks = 0
    for row in rows:
        mask = Mask.of_row(row)
        relative = ""
        if mask is not None:
            name = f"{hashlib.sha256(mask.png).hexdigest()}.png"
            if not (masks_dir / name).is_file():  # content-addressed: the same mask is the same file
                write_file_atomic(masks_dir / name, _writes(mask.png))
            relative = f"{masks_dir.name}/{name}"
            n_masks += 1
        writer.writerow([row["id"], row["label"], relative])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(out, _writes(text.getvalue().encode("utf-8")))
    where = f", masks in {masks_dir}{os.sep}" if n_masks else ""
    click.echo(
        f"exported {len(rows)} label{'s' * (len(rows) != 1)} of {product} ({n_masks} with a mask) to {out}{where}"
    )


def _writes(data: bytes) -> Callable[[BinaryIO], object]:
    """What :func:`~ear_stream.io.results.write_file_atomic` calls to fill its temporary file with ``data``."""
    return lambda f: f.write(data)
