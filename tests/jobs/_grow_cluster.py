"""A Ray cluster of its own for the resize test: a 1-CPU head; `grow` on stdin adds a 1-CPU node.

Run as a subprocess (`python tests/jobs/_grow_cluster.py TEMP_DIR`): it prints the cluster's
address, then reads commands from stdin: `grow` adds a node (prints `grown`), `stop` or end of
input shuts the cluster down. Its own cluster, not the session's: adding a node to the shared
one would change what every later test sees.
"""

from __future__ import annotations

import sys

from ray.cluster_utils import Cluster


def main(temp_dir: str) -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": temp_dir},
    )
    print(cluster.address, flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "grow":
                cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
                print("grown", flush=True)
            elif line.strip() == "stop":
                break
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
