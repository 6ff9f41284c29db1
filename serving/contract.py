"""The serving contract: what the `recommend` model takes and answers, shared by the repository
writer, the Python models, the client SDK and perf. model_repository/README.md documents it.

Every tensor has the request's rows (users) as its first dimension: [rows, ...].
"""
MODEL = "recommend"        # the model clients call, ensemble or fused
SIMILAR = "similar"        # seed items -> similar items (serving/similar.py), beside a top-N ranker

# Ids come as the data set has them, decided per catalogue (users, items): integers (INT64) or
# strings (TYPE_STRING, i.e. BYTES holding UTF-8: "u42", "sku-50"). A build writes each id
# tensor's type from the served ids (id_type); the lists below give the integer default.
INT_ID, STRING_ID = "TYPE_INT64", "TYPE_STRING"
USER_ID_TENSORS = ("USER_ID",)                      # typed by the user catalogue
ITEM_ID_TENSORS = ("ITEM_IDS", "RECOMMENDED_IDS", "EXCLUDE_IDS", "INCLUDE_IDS")   # typed by the item catalogue

# Inputs: all optional; a request sends USER_ID, or ITEM_IDS (with or without RATINGS), or both.
USER_ID = "USER_ID"        # int64 or bytes [rows, 1]: a known user's raw id
ITEM_IDS = "ITEM_IDS"      # int64 or bytes [rows, n]: raw ids of items in a user's history
RATINGS = "RATINGS"        # float32 [rows, n]: their ratings, on the data set's scale; left out:
                           # each item counts as rated at the scale's top (1.0 for an interaction log)
TOP_K = "TOP_K"            # int32 [rows, 1]: list length, the same on every row
# Per-request rules (serving/rules.py), padded as ITEM_IDS is; unknown ids are skipped and counted.
EXCLUDE_IDS = "EXCLUDE_IDS"  # int64 or bytes [rows, n]: items never returned to that row
INCLUDE_IDS = "INCLUDE_IDS"  # int64 or bytes [rows, n]: the only items that row may get (a row of
                             # padding alone: no include rule)
INPUTS = {USER_ID: "TYPE_INT64", ITEM_IDS: "TYPE_INT64", RATINGS: "TYPE_FP32", TOP_K: "TYPE_INT32",
          EXCLUDE_IDS: "TYPE_INT64", INCLUDE_IDS: "TYPE_INT64"}

# Outputs, each [rows, k] unless said.
RECOMMENDED_IDS = "RECOMMENDED_IDS"        # int64 or bytes: raw item ids, best first (PAD / PAD_ID in padding)
SCORES = "SCORES"                          # float32: what ordered the list (NaN in padding)
PREDICTED_RATINGS = "PREDICTED_RATINGS"    # float32: the rater's predictions, clipped; only with a rater
TITLES = "TITLES"                          # bytes: UTF-8 titles (b"" in padding)
N_RECOMMENDED = "N_RECOMMENDED"            # int32 [rows, 1]: real items in the row
UNKNOWN_ITEMS = "UNKNOWN_ITEMS"            # int32 [rows, 1]: sent item ids the model does not know
                                           # (ITEM_IDS, EXCLUDE_IDS and INCLUDE_IDS together)
SOURCE = "SOURCE"                          # bytes [rows, 1]: what ranked the row, SOURCE_MODEL or
                                           # SOURCE_POPULARITY (serving/fallback.py)
OUTPUTS = {RECOMMENDED_IDS: "TYPE_INT64", SCORES: "TYPE_FP32", TITLES: "TYPE_STRING", N_RECOMMENDED: "TYPE_INT32",
           PREDICTED_RATINGS: "TYPE_FP32", UNKNOWN_ITEMS: "TYPE_INT32", SOURCE: "TYPE_STRING"}
SOURCE_MODEL, SOURCE_POPULARITY = b"model", b"popularity"

# Between the ensemble's steps (preprocess -> networks -> postprocess).
DENSE = "DENSE"                            # float32 [rows, n_items]: the user's ratings, 0 = not rated
TOP_K_OUT = "TOP_K_OUT"                    # int32 [rows, 1]: TOP_K, its default filled in
RANKER_SCORES = "RANKER_SCORES"            # float32 [rows, n_items]: the ranker's output
BLOCKED = "BLOCKED"                        # bool [rows, n_items]: items the request's rules keep out
RATER_PREDICTIONS = "RATER_PREDICTIONS"    # float32 [rows, n_items]: the rater's output

# The exported networks' tensors: float32 [rows, n_items] in and out.
NETWORK_INPUT, NETWORK_OUTPUT = "RATINGS", "PREDICTIONS"

MAX_ROWS = 64                  # users per request: every served step's max_batch_size
MAX_ITEMS_PER_REQUEST = 10_000  # ITEM_IDS entries per row
MAX_RULE_IDS = 10_000          # EXCLUDE_IDS (and INCLUDE_IDS) entries per row
# A repository's answer to a user it cannot rank (unknown USER_ID, or no training ratings and no
# known item sent): the popularity list (SOURCE popularity), or a 400 (`aerec repository --cold-start`).
COLD_START_POPULARITY, COLD_START_REFUSE = "popularity", "refuse"
COLD_STARTS = (COLD_START_POPULARITY, COLD_START_REFUSE)
DEFAULT_TOP_K = 10             # when TOP_K is left out; capped at the catalogue's size
# Several new users in one request send ITEM_IDS/RATINGS as [rows, longest list], the shorter
# rows padded with ITEM_IDS PAD (any rating) or RATINGS 0 (0 is the dense vector's "not rated";
# no scale includes it). The same PAD marks an answer's padding slots and ranking's padding column.
# String ids pad with PAD_ID (b"", never an id) in requests and answers alike.
PAD = -1
PAD_ID = b""
PAD_TITLE = b""

# Triton's restricted APIs (model control, logging ...) check this header; gRPC carries it
# as metadata with Triton's fixed prefix.
ADMIN_HEADER = "aerec-admin-key"


def id_type(ids) -> str:
    """The tensor type of a catalogue's ids (a numpy array): STRING_ID for unicode ('<U...'),
    INT_ID otherwise."""
    return STRING_ID if ids.dtype.kind == "U" else INT_ID


def datatype(config_type: str) -> str:
    """A config data_type as the client APIs name it: TYPE_STRING -> BYTES, TYPE_INT64 -> INT64."""
    return "BYTES" if config_type == STRING_ID else config_type.removeprefix("TYPE_")


def default_top_k(n_items: int) -> int:
    """TOP_K when a request leaves it out: ten, or every item of a smaller catalogue."""
    return min(DEFAULT_TOP_K, n_items)


def admin_headers(key: str, protocol: str) -> dict:
    """The header that unlocks the restricted APIs, in the form `protocol` ("http" | "grpc") expects."""
    return {ADMIN_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}": key}
