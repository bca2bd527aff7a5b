"""The `sonoedge` verbs: `main` parses, one module per verb that needs more than a few lines."""

# The --help of the options several verbs share, said once (tests/test_cli.py checks that
# every option of every verb says what it does).
CONFIG_HELP = "the device's config file (TOML); default: none, the built-in settings"
MODELS_DIR_HELP = "a models folder (default: the config's [models] dir, else the shipped models/)"
BACKEND_HELP = "the runtime (default: the config's [models] backend, litert)"
THREADS_HELP = "inference threads, 1-64 (default: the config's [models] num_threads, 2)"
STATE_DIR_HELP = "device state directory (default: the config's [device] state_dir, else state)"
