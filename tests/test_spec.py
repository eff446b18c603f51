"""ClusterSpec parsing and validation: every error names the field, the value and the rule."""

from __future__ import annotations

import pytest

from jupyter_raykube.spec import (ClusterSpec, SpecError, WorkerGroup, default_groups, parse_bytes, parse_cpus,
                                  parse_group_setting, parse_range)


def test_defaults_have_a_cpu_and_a_gpu_group() -> None:
    cpu, gpu = default_groups(cpu_count=8, gpu_count=0)
    assert (cpu.name, cpu.cpus, cpu.min, cpu.max) == ("cpu", 1, 0, 8)
    assert (gpu.name, gpu.gpus, gpu.max) == ("gpu", 1, 0)
    assert ClusterSpec(name="a").head.cpus == 0


@pytest.mark.parametrize("text,expected", [("0:4", (0, 4)), ("3", (3, 3)), ("2:2", (2, 2))])
def test_parse_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_range("--cpu-workers", text) == expected


@pytest.mark.parametrize("text,fragment", [("5:2", "min (5) must be <= max (2)"),
                                           ("a:b", "MIN:MAX"), ("-1:2", "MIN:MAX"), ("1:2:3", "MIN:MAX")])
def test_parse_range_errors_name_the_flag(text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_range("--cpu-workers", text)
    assert "--cpu-workers" in str(err.value) and repr(text) in str(err.value) and fragment in str(err.value)


def test_quantities_use_kubernetes_rules() -> None:
    assert parse_cpus("cpus", "2000m") == 2
    assert parse_bytes("memory", "1Gi") == 1024**3
    with pytest.raises(SpecError, match="whole number of CPUs"):
        parse_cpus("cpus", "500m")
    with pytest.raises(SpecError, match=r"memory='lots'"):
        parse_bytes("memory", "lots")


@pytest.mark.parametrize("kwargs,field", [
    ({"name": "cpu", "min": 5, "max": 2}, "groups.cpu.max"),
    ({"name": "cpu", "cpus": -1}, "groups.cpu.cpus"),
    ({"name": "Bad_Name"}, "group name"),
    ({"name": "cpu", "cpus": 0}, "groups.cpu.cpus"),
    ({"name": "cpu", "custom": {"GPU": 1}}, "groups.cpu.custom"),
])
def test_group_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        WorkerGroup(**kwargs)
    assert err.value.field == field


def test_cluster_name_must_be_a_dns_label() -> None:
    with pytest.raises(SpecError, match="name='My Cluster'.*lowercase"):
        ClusterSpec(name="My Cluster")
    with pytest.raises(SpecError, match="at most 40"):
        ClusterSpec(name="a" * 41)


def test_unknown_group_lists_the_groups() -> None:
    spec = ClusterSpec(name="a", groups=default_groups(2, 0))
    with pytest.raises(SpecError, match="group='tpu'.*cpu, gpu"):
        spec.group("tpu")


def test_from_dict_round_trip_and_unknown_fields() -> None:
    spec = ClusterSpec(name="a", groups=default_groups(2, 0), idle_timeout_s=5, env={"X": "1"})
    assert ClusterSpec.from_dict(spec.to_dict(), defaults=ClusterSpec(name="a")) == spec
    with pytest.raises(SpecError, match="bogus"):
        ClusterSpec.from_dict({"name": "a", "bogus": 1}, defaults=spec)
    with pytest.raises(SpecError, match="groups.cpu.max"):
        ClusterSpec.from_dict({"name": "a", "groups": [{"name": "cpu", "min": 3, "max": 1}]}, defaults=spec)
    with pytest.raises(SpecError, match="idle_timeout_s"):
        ClusterSpec.from_dict({"name": "a", "idle_timeout_s": "soon"}, defaults=spec)


def test_from_dict_merges_named_groups_with_defaults() -> None:
    base = ClusterSpec(name="a", groups=default_groups(4, 0))
    spec = ClusterSpec.from_dict({"name": "b", "groups": [{"name": "cpu", "max": 2, "memory": "2Gi"}]},
                                 defaults=base)
    assert spec.name == "b"
    assert spec.group("cpu") == WorkerGroup("cpu", cpus=1, min=0, max=2, memory=2 * 1024**3)


def test_a_configured_group_list_names_the_setting_and_the_entry() -> None:
    groups = parse_group_setting("default_groups", [{"name": "a100", "gpus": 1, "max": 2}])
    assert [(g.name, g.gpus, g.max) for g in groups] == [("a100", 1, 2)]
    for items, message in (
            ([{"name": "cpu", "max": -1}], "default_groups[0].max=-1 is not allowed: a whole number from 0 to 1000"),
            ([{"name": "cpu"}, {"max": 1}], "default_groups[1]={'max': 1} is not allowed: a group object with a "),
            ("cpu", "default_groups='cpu' is not allowed: a list of group objects")):
        with pytest.raises(SpecError) as info:
            parse_group_setting("default_groups", items)
        assert str(info.value).startswith(message), info.value
