"""Score tables, keep lists and manifests, all written atomically."""

from keepset.io.atomic import (
    OutputExistsError, atomic_dir, atomic_files, atomic_path, check_output_dir, check_output_file, check_writable,
    write_text_atomic,
)
from keepset.io.keeplist import (
    DATACOMP_DTYPE, check_datacomp_subset, datacomp_to_uids, read_keep_list, uids_to_datacomp, write_keep_list,
)
from keepset.io.manifest import file_fingerprint, write_manifest
from keepset.io.tables import column_direction, read_score_table, read_table_metadata, write_score_table

__all__ = ["OutputExistsError", "atomic_path", "atomic_dir", "atomic_files", "check_output_dir", "check_output_file",
           "check_writable", "write_text_atomic", "write_keep_list", "read_keep_list", "uids_to_datacomp",
           "datacomp_to_uids", "check_datacomp_subset", "DATACOMP_DTYPE", "write_manifest", "file_fingerprint",
           "write_score_table", "read_score_table", "read_table_metadata", "column_direction"]
