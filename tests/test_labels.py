"""Ray node labels and label selectors, outside the planner: a group's labels as the spec
parses and checks them, and a task's label_selector as the GCS reports it (Ray's own protobuf,
built here the way the GCS fills it, parsed by the demand reader)."""

from __future__ import annotations

import pytest

from jupyter_raykube.spec import ClusterSpec, SpecError, WorkerGroup


def test_group_labels_parse_from_json_and_round_trip() -> None:
    spec = ClusterSpec.from_dict({"name": "lab", "groups": [
        {"name": "a100", "cpus": 8, "gpus": 1, "max": 2,
         "labels": {"ray.io/accelerator-type": "A100", "team": "vision", "zone": ""}}]})
    assert spec.group("a100").labels == {"ray.io/accelerator-type": "A100", "team": "vision", "zone": ""}
    assert ClusterSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("labels, field, fragment", [
    ({"ray.io/accelerator-type": "A 100"}, "groups.g.labels.ray.io/accelerator-type", "a label value"),
    ({"-team": "x"}, "groups.g.labels", "a Ray label key"),
    ({"a/b/c": "x"}, "groups.g.labels", "a Ray label key"),
    ({"Ray.IO/x": "y"}, "groups.g.labels", "a Ray label key"),
    ({"k" * 64: "x"}, "groups.g.labels", "a Ray label key"),
    ({f"k{i}": "v" for i in range(33)}, "groups.g.labels", "at most 32"),
])
def test_bad_labels_name_the_field_the_value_and_what_is_allowed(labels: dict, field: str, fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        WorkerGroup("g", labels=labels)
    assert err.value.field == field
    assert fragment in err.value.allowed


def test_labels_must_be_a_string_mapping_in_json() -> None:
    with pytest.raises(SpecError, match=r"groups\.g\.labels=.* an object of string -> string"):
        ClusterSpec.from_dict({"name": "lab", "groups": [{"name": "g", "labels": {"gpu": 1}}]})
