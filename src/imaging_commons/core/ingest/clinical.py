"""Clinical tables (CSV or Parquet keyed by patient) staged for the next version: their
columns become filters."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..catalog import Catalog, _q, copy_to_parquet, normalise_collection_id
from ..errors import InvalidRequest
from .writers import exclusive


@dataclass(frozen=True, slots=True)
class ClinicalSource:
    """A clinical table staged for the next version: its columns (name: DuckDB type) become
    filters on the collection's patients."""

    source: str
    collection_id: str
    columns: dict[str, str]


@exclusive
def stage_clinical(catalog: Catalog, file: str | os.PathLike, collection: str, source: str,
                   patient_column: str | None = None) -> ClinicalSource:
    """Register a clinical table (CSV or Parquet keyed by patient) for the next version."""
    path = Path(file)
    if not path.is_file():
        raise InvalidRequest(f"No such file: {path}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,62}", source):
        raise InvalidRequest("--source must be a name of letters, digits and '_' "
                             "starting with a letter")
    con = catalog.connection()
    # CSV values stay as written unless they are numbers: the sniffer would otherwise turn
    # yes/no into true/false (and dates into DATE), and a filter on "yes" would match nothing
    src = (f"read_parquet('{path}')" if path.suffix.lower() == ".parquet" else
           f"read_csv('{path}', auto_type_candidates=['BIGINT', 'DOUBLE', 'VARCHAR'])")
    try:
        columns = {d[0]: d[1] for d in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    except Exception as e:  # duckdb raises several types for unreadable input
        raise InvalidRequest(f"Cannot read {path}: {e}") from None
    key = patient_column or next(
        (c for c in columns if c.lower() in
         ("patientid", "dicom_patient_id", "case_barcode", "submitter_id", "patient_id")), None)
    if key is None or key not in columns:
        raise InvalidRequest(f"No patient column found in {path}; name it with --patient-column")
    collection_id = normalise_collection_id(collection)
    name = f"clinical-{uuid.uuid4().hex[:12]}.parquet"
    others = ", ".join(_q(c) for c in columns if c != key)
    copy_to_parquet(
        con, f"SELECT CAST({_q(key)} AS VARCHAR) AS PatientID, ? AS collection_id"
             f"{', ' + others if others else ''} FROM {src}",
        catalog.staging_dir / name, [collection_id])
    filters = {c: t for c, t in columns.items() if c != key}
    entry = {"source": source, "collection_id": collection_id, "file": name, "columns": filters}
    stage = catalog.stage()
    stage["clinical"] = [c for c in stage.get("clinical", [])
                         if (c["source"], c["collection_id"]) != (source, collection_id)]
    stage["clinical"].append(entry)
    catalog.write_stage(stage)
    return ClinicalSource(source, collection_id, filters)
