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
    ({"-team": "x"}, "groups.g.labels", "a label key"),
    ({"a/b/c": "x"}, "groups.g.labels", "a label key"),
    ({"Ray.IO/x": "y"}, "groups.g.labels", "a label key"),
    ({"k" * 64: "x"}, "groups.g.labels", "a label key"),
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


def test_demand_reader_keeps_label_selectors_and_fallbacks() -> None:
    from ray.core.generated import autoscaler_pb2, common_pb2

    from jupyter_raykube.autoscaler.demand import parse_state
    from jupyter_raykube.autoscaler.planner import LabelConstraint

    op = common_pb2.LabelSelectorOperator.Value

    def selector(*constraints: tuple[str, str, list[str]]) -> common_pb2.LabelSelector:
        return common_pb2.LabelSelector(label_constraints=[
            common_pb2.LabelSelectorConstraint(label_key=k, operator=op(o), label_values=v) for k, o, v in constraints])

    a100 = selector(("ray.io/accelerator-type", "LABEL_OPERATOR_IN", ["A100"]),
                    ("ray.io/market-type", "LABEL_OPERATOR_NOT_IN", ["spot"]))
    fallback = selector(("ray.io/accelerator-type", "LABEL_OPERATOR_IN", ["L4", "H100"]))
    state = autoscaler_pb2.ClusterResourceState(
        pending_resource_requests=[
            autoscaler_pb2.ResourceRequestByCount(count=3, request=autoscaler_pb2.ResourceRequest(
                resources_bundle={"CPU": 1.0}, label_selectors=[a100, fallback])),
            autoscaler_pb2.ResourceRequestByCount(count=2, request=autoscaler_pb2.ResourceRequest(
                resources_bundle={"CPU": 1.0}, label_selectors=[selector()]))],
        pending_gang_resource_requests=[autoscaler_pb2.GangResourceRequest(
            details="pg1:PACK|PENDING",
            requests=[autoscaler_pb2.ResourceRequest(resources_bundle={"GPU": 1.0}, label_selectors=[fallback]),
                      autoscaler_pb2.ResourceRequest(resources_bundle={"CPU": 1.0})])])
    parsed = parse_state(state)
    selected, anywhere = parsed.demand
    assert selected.selectors == (
        (LabelConstraint("ray.io/accelerator-type", "in", ("A100",)),
         LabelConstraint("ray.io/market-type", "not_in", ("spot",))),
        (LabelConstraint("ray.io/accelerator-type", "in", ("H100", "L4")),))
    assert (anywhere.count, anywhere.selectors) == (2, ())  # an empty selector matches every node
    (gang,) = parsed.gangs
    assert gang.bundle_selectors == (((LabelConstraint("ray.io/accelerator-type", "in", ("H100", "L4")),),), ())


def test_kubernetes_worker_pod_starts_ray_with_the_groups_labels() -> None:
    from jupyter_raykube.backends import k8s_objects as o

    meta = o.ClusterMeta(name="alice-1", namespace="jhub", cluster_id="0a1b2c3d", owner="alice")
    spec = ClusterSpec(name="alice-1", backend="kubernetes", groups=(
        WorkerGroup("a100", cpus=4, gpus=1, max=2, labels={"ray.io/accelerator-type": "A100", "team": "vision"}),
        WorkerGroup("cpu", cpus=2, max=2)))
    size = o.NodeSize(cpus=4, gpus=1, memory=2**33, object_store_memory=2**31)
    settings = o.PodSettings(image="rayproject/ray:2.60.0-py311")

    def labels_flag(group: str) -> str:
        (container,) = o.make_worker_pod(meta, spec, group, f"alice-1-{group}-x", size, settings).spec.containers
        (flag,) = [a for a in container.args if a.startswith("--labels=")]
        return flag

    assert labels_flag("a100") == ("--labels=ray.io/accelerator-type=A100,team=vision,"
                                   "raykube.io/cluster=alice-1,raykube.io/group=a100")
    assert labels_flag("cpu") == "--labels=raykube.io/cluster=alice-1,raykube.io/group=cpu"
