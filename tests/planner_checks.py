"""What every plan must satisfy, checked from outside the planner on any snapshot: limits
(group max, max_workers, backed-off groups), that whatever the plan says fits really fits
(``planner_detail.assign``'s bins, gangs all-or-nothing, statuses adding up to the demand), that
every launched node is needed, and that any extra cost buys fewer nodes."""

from __future__ import annotations

from collections import Counter, defaultdict

from jupyter_raykube.autoscaler.planner import ACCELERATOR_WEIGHT, node_costs, plan

from .planner_detail import assign, cost_first


def _alive_after(req, reply):
    gone = {t.node_id for t in reply.terminate}
    alive = Counter(n.group for n in req.nodes if n.state != "draining" and n.node_id not in gone)
    return alive, sum(alive.values())


def check_limits(req, reply):
    """Never above a group's max or max_workers; blocked groups launch nothing."""
    alive, total = _alive_after(req, reply)
    for g in req.groups:
        n = reply.launch.get(g.name, 0)
        assert n >= 0
        if n:
            assert alive[g.name] + n <= g.max_nodes
            assert g.name not in req.blocked_groups
    if req.max_workers is not None and reply.launch:
        assert total + sum(reply.launch.values()) <= req.max_workers
    assert all(n > 0 for n in reply.launch.values())
    assert set(reply.launch_reasons) == set(reply.launch)


def _add(acc, shape, times):
    for k, v in shape.items():
        acc[k] += v * times


def _fits(capacity, used):
    return all(used[k] <= capacity.get(k, 0) + 1e-6 * max(1.0, capacity.get(k, 0)) for k in used)


def _capacities(req, detail):
    groups = {g.name: g for g in req.groups}
    nodes = {n.node_id: n for n in req.nodes}
    out = {}
    for node in detail.nodes:
        if node.origin == "new":
            out[node.node_id] = (dict(groups[node.group].resources), dict(groups[node.group].resources))
        else:
            n = nodes[node.node_id]
            out[node.node_id] = (dict(n.available if n.state == "running" else n.total), dict(n.total))
    return out


def check_fits(req, detail):
    """Place what the plan assigned on free capacity (totals for request_resources): no
    resource goes negative; gangs are all-or-nothing; task statuses add up to the demand."""
    reply = detail.reply
    caps = _capacities(req, detail)
    gone = {t.node_id for t in reply.terminate}
    draining = {n.node_id for n in req.nodes if n.state == "draining"}
    launched = Counter(n.group for n in detail.nodes if n.origin == "new")
    assert dict(launched) == dict(reply.launch)
    gang_units = defaultdict(Counter)  # batch tag -> (bundle position or "", shape) -> copies
    gang_nodes = defaultdict(lambda: defaultdict(set))  # batch tag -> node -> positions on it
    task_units = Counter()
    for node in detail.nodes:
        assert node.node_id not in draining
        if node.node_id in gone:
            assert not node.demand and not node.held
        free, total = caps[node.node_id]
        used, held = defaultdict(float), defaultdict(float)
        for tag, shape, copies in node.demand:
            _add(used, shape, copies)
            if tag.startswith("pg:"):
                batch, _, position = tag.partition("#")
                gang_units[batch][(position, tuple(sorted(shape.items())))] += copies
                gang_nodes[batch][node.node_id].add(position)
            elif tag == "task":
                task_units[tuple(sorted(shape.items()))] += copies
        for _, shape, copies in node.held:
            _add(held, shape, copies)
        assert _fits(free, used), (node, free)
        assert _fits(total, held), (node, total)
    # Gangs: each placed gang has all its bundles placed (STRICT_PACK: their sum, on one node);
    # STRICT_SPREAD: a node holds at most one bundle position of a batch (one bundle per gang).
    gangs = {g.id: g for g in req.gangs}
    placed = [i for ids in detail.gangs.values() for i in ids]
    assert len(placed) == len(set(placed))
    for batch, ids in detail.gangs.items():
        assert gang_units[batch] or not ids
        if not ids:
            continue
        gang = gangs[ids[0]]
        assert all((gangs[i].strategy, Counter(map(_key, gangs[i].bundles))) ==
                   (gang.strategy, Counter(map(_key, gang.bundles))) for i in ids)
        bundles = Counter(map(_key, gang.bundles))
        if gang.strategy == "STRICT_PACK":
            total = defaultdict(float)
            for b in gang.bundles:
                _add(total, b, 1)
            bundles = Counter({_key(total): 1})
        got = Counter()
        for (_, shape), copies in gang_units[batch].items():
            got[shape] += copies
        assert got == Counter({k: n * len(ids) for k, n in bundles.items()})
        if gang.strategy == "STRICT_SPREAD":
            assert all(len(positions) == 1 for positions in gang_nodes[batch].values())
            assert all(copies == len(ids) for copies in gang_units[batch].values())
    gang_status = Counter()
    for p in reply.pending:
        if p.kind == "placement_group":
            gang_status[p.status] += p.count
    assert gang_status["waiting"] == len(placed)
    assert sum(gang_status.values()) == sum(1 for g in req.gangs if any(v > 0 for b in g.bundles for v in b.values()))
    # The reply's task statuses add up to the demand, and "waiting" is what was placed.
    demanded = Counter()
    for d in req.demand:
        demanded[tuple(sorted((k, float(v)) for k, v in d.shape.items() if v > 0))] += d.count
    reported, waiting = Counter(), Counter()
    for p in reply.pending:
        if p.kind == "task":
            key = tuple(sorted(p.shape.items()))
            reported[key] += p.count
            if p.status == "waiting":
                waiting[key] += p.count
            assert p.reason
    assert reported == demanded
    assert waiting == task_units


def _key(shape):
    return tuple(sorted((k, float(v)) for k, v in shape.items() if v > 0))


def _greedy_move(units, leftovers):
    """Can every unit (shape dicts) be put on some leftover? First fit, largest first."""
    for shape in sorted(units, key=lambda s: -sum(s.values())):
        for left in leftovers:
            if all(left.get(k, 0) + 1e-9 >= v for k, v in shape.items()):
                for k, v in shape.items():
                    left[k] = left.get(k, 0) - v
                break
        else:
            return False
    return True


def check_every_launched_node_is_needed(req, detail):
    """Each launched node carries demand (or is for min); the tasks on it cannot all be moved
    to what is left free on the other nodes -- removing it would leave demand unserved."""
    caps = _capacities(req, detail)
    gone = {t.node_id for t in detail.reply.terminate}
    leftovers = {}
    for node in detail.nodes:
        if node.node_id in gone:
            continue
        free = dict(caps[node.node_id][0])
        for _, shape, copies in node.demand:
            for k, v in shape.items():
                free[k] = free.get(k, 0) - v * copies
        leftovers[node.node_id] = free
    for node in detail.nodes:
        if node.origin != "new" or node.for_min:
            continue
        assert node.demand or node.held, f"{node.node_id} launched for nothing"
        if node.held or any(tag != "task" for tag, _, _ in node.demand):
            continue  # request_resources and gang bundles are checked by their own passes
        units = [shape for _, shape, copies in node.demand for _ in range(copies)]
        others = [dict(left) for nid, left in leftovers.items() if nid != node.node_id]
        assert not _greedy_move(units, others), f"{node.node_id}'s tasks fit elsewhere"


def check_nodes_are_traded_for_at_most_one_accelerator_each(req, reply):
    """Against the passes' own cost-first plan, any extra cost buys fewer nodes, at most one
    accelerator's price per node saved."""
    costs = node_costs(req.groups)
    cost = sum(n * costs[name] for name, n in reply.launch.items())
    first = cost_first(req)
    saved = first.nodes - sum(reply.launch.values())
    assert cost - first.cost <= ACCELERATOR_WEIGHT * saved + 1e-6


def check_no_gpu_nodes_for_cpu_demand(req, reply):
    """CPU-only demand never launches a GPU node while a CPU group could hold it (capped or not)."""
    cpu_groups = [g for g in req.groups if not g.resources.get("GPU")]
    shapes = [d.shape for d in (*req.demand, *req.constraints)]
    for gang in req.gangs:
        if gang.strategy == "STRICT_PACK":
            total = defaultdict(float)
            for b in gang.bundles:
                _add(total, b, 1)
            shapes.append(dict(total))
        else:
            shapes.extend(gang.bundles)
    if any(s.get("GPU") for s in shapes):
        return
    if not all(any(all(g.resources.get(k, 0) >= v for k, v in s.items()) for g in cpu_groups) for s in shapes):
        return
    alive, _ = _alive_after(req, reply)
    for g in req.groups:
        if g.resources.get("GPU"):
            assert reply.launch.get(g.name, 0) <= max(0, g.min_nodes - alive[g.name])


def check_plan(req):
    """The checks every generated snapshot must pass; returns the planner's detail."""
    detail = assign(req)
    assert plan(req) == detail.reply
    check_limits(req, detail.reply)
    check_fits(req, detail)
    check_every_launched_node_is_needed(req, detail)
    check_nodes_are_traded_for_at_most_one_accelerator_each(req, detail.reply)
    return detail
