"""Holds a rendered InferenceService to the kserve SDK's model classes: every field must map to
an attribute of V1beta1InferenceService and its parts, and the object must serialise back to the
same document. Run it as its own process (`python -m server.deploy.kserve_check FILE`): the
kserve package registers protobuf messages that clash with tritonclient's in one interpreter.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

PRIMITIVES = {"str", "int", "float", "bool", "object", "date", "datetime"}


class InferenceServiceError(ValueError):
    """A document the kserve SDK's model classes do not describe."""


def from_plain(data, klass, where: str = ""):
    """Builds kserve (or kubernetes) SDK model objects from a camelCase dict, as the SDK's
    `openapi_types` and `attribute_map` say.

    Returns the object (lists and dicts of them for `list[...]`/`dict(...)` types). Raises
    InferenceServiceError naming the path of a field the class does not have (the SDK's own
    deserialiser drops such fields silently)."""
    import kserve.models
    import kubernetes.client.models
    if data is None:
        return None
    if isinstance(klass, str):
        # kserve's generator writes list[X] and dict(str, X); the kubernetes client's List[X], Dict[str, X]
        if m := re.fullmatch(r"[lL]ist\[(.*)\]", klass):
            return [from_plain(d, m.group(1), f"{where}[{i}]") for i, d in enumerate(data)]
        if m := re.fullmatch(r"dict\([^,]*, (.*)\)|Dict\[[^,]*, (.*)\]", klass):
            value = m.group(1) or m.group(2)
            return {k: from_plain(d, value, f"{where}.{k}") for k, d in data.items()}
        if klass in PRIMITIVES or klass == "ResourceQuantity":
            return data
        klass = getattr(kserve.models, klass, None) or getattr(kubernetes.client.models, klass)
    if not isinstance(data, dict):
        raise InferenceServiceError(f"{where or '.'}: expected a mapping for {klass.__name__}, got {data!r}")
    unknown = sorted(set(data) - set(klass.attribute_map.values()))
    if unknown:
        raise InferenceServiceError(f"{where or '.'}: {klass.__name__} has no field {', '.join(unknown)}")
    fields = {attr: from_plain(data[key], klass.openapi_types[attr], f"{where}.{key}")
              for attr, key in klass.attribute_map.items() if key in data}
    try:
        return klass(**fields)
    except (TypeError, ValueError) as e:   # the classes check required fields; pydantic ones check types
        raise InferenceServiceError(f"{where or '.'}: not a valid {klass.__name__}: {e}") from e


def check_inference_service(document: dict):
    """Returns the document as a kserve V1beta1InferenceService. Raises InferenceServiceError
    when a field is unknown or the object does not serialise back to the same document."""
    from kserve.api_client import ApiClient
    if document.get("kind") != "InferenceService":
        raise InferenceServiceError(f"kind {document.get('kind')!r}, expected InferenceService")
    isvc = from_plain(document, "V1beta1InferenceService")
    back = ApiClient().sanitize_for_serialization(isvc)
    if back != document:
        raise InferenceServiceError(f"does not round-trip through the kserve SDK: {back} != {document}")
    return isvc


def main(argv: list[str]) -> int:
    for path in argv:
        try:
            isvc = check_inference_service(yaml.safe_load(Path(path).read_text()))
        except InferenceServiceError as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 1
        print(f"{path}: {type(isvc).__name__} {isvc.metadata.name} "
              f"(triton runtime {isvc.spec.predictor.triton.runtime_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
