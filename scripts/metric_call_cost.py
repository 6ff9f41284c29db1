"""What one custom-metric call costs inside a Triton Python stub (the recommendation models make
them per request, serving/metrics.py): `python scripts/metric_call_cost.py`.

Writes a one-model repository to a temporary folder, whose Python model times, interleaved,
2,000 each of a counter's increment(0), increment(1), a histogram's observe and no call, and
answers their medians (us); prints five such answers. Each call is a round trip from the stub
to Triton's server process.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from server.launcher import TritonServer

CONFIG = """name: "mtime"
backend: "python"
max_batch_size: 0
input { name: "N" data_type: TYPE_INT32 dims: 1 }
output { name: "US" data_type: TYPE_FP32 dims: 4 }
instance_group { count: 1 kind: KIND_CPU }
"""

MODEL = '''"""Times the metric calls the recommendation models make per request, inside a Python stub:
US = median us of [fallback.increment(0), rows.increment(1), length.observe(10.0), nothing]."""
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        fam = pb_utils.MetricFamily
        lab = {"network": "t", "version": "1"}
        self.fams = [fam(name="t_rows_total", description="r", kind=fam.COUNTER),
                     fam(name="t_fallback_total", description="f", kind=fam.COUNTER),
                     fam(name="t_len", description="l", kind=fam.HISTOGRAM)]
        self.rows = self.fams[0].Metric(labels=lab)
        self.fallback = self.fams[1].Metric(labels=lab)
        self.length = self.fams[2].Metric(labels=lab, buckets=[0.0, 1.0, 5.0, 10.0])

    def execute(self, requests):
        out = []
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "N").as_numpy()[0])
            calls = [lambda: self.fallback.increment(0), lambda: self.rows.increment(1),
                     lambda: self.length.observe(10.0), lambda: None]
            ts = [[] for _ in calls]
            for _ in range(n):
                for i, c in enumerate(calls):   # interleaved
                    t0 = time.perf_counter_ns(); c(); ts[i].append(time.perf_counter_ns() - t0)
            us = np.array([np.median(t) / 1e3 for t in ts], np.float32)
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("US", us)]))
        return out
'''


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        (repo / "mtime" / "1").mkdir(parents=True)
        (repo / "mtime" / "config.pbtxt").write_text(CONFIG)
        (repo / "mtime" / "1" / "model.py").write_text(MODEL)
        with TritonServer(repo, log=Path(tmp) / "server.log") as server:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            for _ in range(5):
                n = grpcclient.InferInput("N", [1], "INT32")
                n.set_data_from_numpy(np.array([2000], np.int32))
                us = client.infer("mtime", [n]).as_numpy("US")
                print("median us: counter increment(0) %.1f, increment(1) %.1f, histogram observe %.1f, "
                      "no call %.2f" % tuple(us))


if __name__ == "__main__":
    main()
