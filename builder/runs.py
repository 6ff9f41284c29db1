"""The former home of run folders and stages, kept for callers outside the package that import
it (perf/): builder.run_folder reads and writes run folders, builder.stages trains and
evaluates them. New code imports those modules."""
from builder.run_folder import (DATASET_ARRAYS, TITLES, RunDataError, code_version, id_array,  # noqa: F401
                                load_run, load_run_dataset, save_dataset, save_run)
from builder.stages import evaluate_run, train_run  # noqa: F401
