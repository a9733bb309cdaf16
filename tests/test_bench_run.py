"""bench/run.py's arithmetic: paired ratios per round and the summary
against issue #5's targets, on runs written by hand."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import run  # noqa: E402


def _run(seconds, cpu=None, requests=None):
    """A daemon's run of one round: {workload: seconds}, CPU of the meta phase."""
    r = {"timings": {n: {"seconds": s, "ops": 5000 if n.startswith("meta") else 256} for n, s in seconds.items()},
         "groups": {}}
    if cpu is not None:
        r["groups"]["meta"] = {"cpu": cpu, "requests": requests}
    return r


def test_targets_take_the_geometric_mean_of_every_pair():
    # meta_create: ours twice the reference in round 1, half in round 2 -> 1.00;
    # tree_rm: 1.5 in both -> the two rows together: (2 * 0.5 * 1.5 * 1.5) ** (1/4)
    rounds = [({"meta_create": 2.0, "tree_rm": 3.0, "seq_read": 1.0}, {"meta_create": 1.0, "tree_rm": 2.0, "seq_read": 0.8}),
              ({"meta_create": 1.0, "tree_rm": 3.0, "seq_read": 1.0}, {"meta_create": 2.0, "tree_rm": 2.0, "seq_read": 1.0})]
    runs = {"ours_runs": [_run(o, cpu=4.0, requests=1000) for o, _ in rounds],
            "reference_runs": [_run(r, cpu=1.0) for _, r in rounds]}
    lines = run.targets({"never": runs})
    table = {ln.split(" | ")[0].strip("| "): ln.split(" | ")[2:] for ln in lines if ln.startswith("| ")}
    assert table["metadata and tree wall time"][0].strip(" |") == f"{(2 * 0.5 * 1.5 * 1.5) ** 0.25:.2f}"
    assert table["sequential read time"][0].strip(" |") == f"{(1.25 * 1.0) ** 0.5:.2f} ✗"       # 1.12 > 1 / 0.9
    assert table["CPU per request, meta"][0].strip(" |") == "4.00 ✗"   # the reference's CPU over our count
    assert "sequential write time" in table and table["sequential write time"][0].strip(" |") == "—"


def test_paired_ratios_are_per_round_with_their_median():
    runs = {"ours_runs": [_run({"meta_stat": s}) for s in (1.0, 3.0, 2.0)],
            "reference_runs": [_run({"meta_stat": s}) for s in (1.0, 1.0, 4.0)]}
    assert run.paired(runs, run._wall_ratio("meta_stat")) == "1.00 (1.00, 3.00, 0.50)"


@pytest.mark.parametrize("daemon", ["ours", "reference"])
def test_a_control_run_puts_one_daemon_on_both_sides(daemon):
    d = run.control_daemons(daemon)
    assert d["ours"] == d["reference"] == (daemon, 1) and d["ours_2q"] == ("ours", 2)
