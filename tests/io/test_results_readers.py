"""Results trees open with the default call of every common reader (docs/design.md, "Parquet")."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ear_stream.io.results import FILE_SCHEMA, SCHEMA, ResultWriter, read_results


def _rows(product: str, n: int) -> list[dict]:
    now = datetime.now(timezone.utc)
    return [dict(id=f"{product}-{i}", product=product, score=0.1 * i, normalized_score=0.1 * i, is_anomaly=i % 2 == 0,
                 threshold=1.0, mask_ratio=0.2, mosaic_scale=8, model_version="v1", worker="w", processed_at=now,
                 n_regions=0, regions=[]) for i in range(n)]  # fmt: skip


@pytest.fixture
def tree(tmp_path):
    writer = ResultWriter(tmp_path / "out", "w")
    writer.write(_rows("tile", 3) + _rows("bracket", 2))
    return tmp_path / "out"


def test_parts_hold_no_partition_key(tree):
    part = next(tree.rglob("part-*.parquet"))
    assert pq.read_schema(part).names == FILE_SCHEMA.names and "product" not in FILE_SCHEMA.names


def test_pyarrow_reads_the_tree_by_default(tree):
    import pyarrow.dataset as ds

    table = pq.read_table(tree)
    assert table.num_rows == 5 and sorted(set(table["product"].to_pylist())) == ["bracket", "tile"]
    assert ds.dataset(tree, partitioning="hive").to_table().num_rows == 5


def test_pandas_reads_the_tree_by_default(tree):
    pd = pytest.importorskip("pandas", reason="pandas is a dev dependency (requirements-dev.txt)")
    df = pd.read_parquet(tree)
    assert len(df) == 5 and set(df["product"].astype(str)) == {"tile", "bracket"}
    assert str(df["score"].dtype) == "float32" and str(df["is_anomaly"].dtype) == "bool"


def test_duckdb_and_polars_read_the_tree(tree):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is a dev dependency (requirements-dev.txt)")
    pl = pytest.importorskip("polars", reason="polars is a dev dependency (requirements-dev.txt)")
    rows = duckdb.sql(
        f"select product, count(*) from read_parquet('{tree}/**/*.parquet', hive_partitioning=true) "
        "group by product order by product"
    ).fetchall()
    assert rows == [("bracket", 2), ("tile", 3)]
    frame = pl.scan_parquet(f"{tree}/**/*.parquet", hive_partitioning=True).collect()
    assert frame.height == 5 and sorted(frame["product"].unique().to_list()) == ["bracket", "tile"]


def test_older_trees_with_product_inside_still_read(tree, tmp_path):
    old = tmp_path / "old" / "product=tile" / "date=2026-11-01"
    old.mkdir(parents=True)
    table = pa.Table.from_pylist(_rows("tile", 2), schema=SCHEMA.remove(SCHEMA.get_field_index("frame_check")))
    pq.write_table(table, old / "part-old-1.parquet")
    shutil.copytree(tree, tmp_path / "old", dirs_exist_ok=True)
    merged = read_results(tmp_path / "old")
    assert merged.num_rows == 5 + 2 - 2  # tile-0/tile-1 of the old part are duplicates of the new ones
    assert merged.schema == SCHEMA


def test_an_unreadable_part_is_skipped_with_a_warning_not_a_traceback(tmp_path, caplog):
    ResultWriter(tmp_path, "w").write(_rows("tile", 3))
    day = next((tmp_path / "product=tile").iterdir())
    (day / "part-w-0000000000000000000-000099.parquet").write_bytes(b"")  # a 0-byte part
    (day / "part-w-0000000000000000001-000100.parquet").write_bytes(b"PAR1 not really")
    with caplog.at_level("WARNING", logger="ear_stream.io.results"):
        table = read_results(tmp_path)
    assert table.num_rows == 3
    assert sum("skipping unreadable results part" in r.getMessage() for r in caplog.records) == 2
