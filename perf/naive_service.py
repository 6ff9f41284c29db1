"""The baseline a user would write by hand: a stdlib HTTP server, JSON in and out, one request
-> one PyTorch forward (of its one user, or of the users it carries) -> mask rated items ->
top-K. No batching across requests, no Triton.
With a rating model beside a top-N model (as the served pipeline has), the top-N model ranks
and the rating model's predictions for the chosen items are returned too.

    python -m perf.naive_service RUN_DIR [--rating-model RUN_DIR2] --port 8099
    curl -d '{"item_ids":[50,172],"ratings":[5,4],"k":10}' localhost:8099/recommend
    curl -d '{"users":[{"item_ids":[50],"ratings":[5]},{"item_ids":[172],"ratings":[4]}],"k":10}' ...
"""
from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from serving.ranking import top_k_unrated
from builder.run_folder import load_run, load_run_dataset


def make_handler(model, item_ids: np.ndarray, rater=None):
    """`model` ranks (scores [1, n_items]); `rater`, if given, predicts the ratings returned."""
    strings = np.asarray(item_ids).dtype.kind == "U"   # a catalogue of string ids: JSON strings
    key = str if strings else int
    index = {i: c for c, i in enumerate(item_ids.tolist())}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as any client library would use
        # Headers and body go out in separate writes; without TCP_NODELAY, Nagle + delayed ACK
        # add ~40 ms to every answer and the baseline would look far worse than it is.
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                users = body["users"] if "users" in body else [body]   # one forward for all of them
                x = np.zeros((len(users), len(item_ids)), np.float32)
                for b, user in enumerate(users):
                    for i, r in zip(user["item_ids"], user["ratings"]):
                        c = index.get(key(i))
                        if c is not None:
                            x[b, c] = float(r)
                with torch.no_grad():
                    pred = model(torch.from_numpy(x)).numpy()
                    rated = None if rater is None else rater(torch.from_numpy(x)).numpy()
                answers = []
                for b, top in enumerate(top_k_unrated(pred, x != 0, int(body.get("k", 10)))):
                    top = top[top >= 0]  # -1 pads the slots beyond the user's unrated items
                    answer = {"item_ids": item_ids[top].tolist(), "scores": pred[b, top].tolist()}
                    if rated is not None:
                        answer["predicted_ratings"] = rated[b, top].tolist()
                    answers.append(answer)
                answer = {"users": answers} if "users" in body else answers[0]
                out = json.dumps(answer).encode()
                self.send_response(200)
            except (KeyError, ValueError, TypeError) as e:
                out = json.dumps({"error": str(e)}).encode()
                self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    return Handler


def serve(run_dir: Path, port: int, threads: int = 1, rating_run: Path | None = None) -> ThreadingHTTPServer:
    """The hand-written baseline: a ThreadingHTTPServer on 127.0.0.1:`port` answering POST
    /recommend with the ranker's top-K (and the rater's predicted ratings), one PyTorch forward
    per request on `threads` threads; not started yet (call serve_forever)."""
    torch.set_num_threads(threads)
    model = load_run(run_dir)[1]
    rater = load_run(rating_run)[1] if rating_run else None
    dataset = load_run_dataset(run_dir)
    return ThreadingHTTPServer(("127.0.0.1", port), make_handler(model, dataset.item_ids, rater))


def main() -> None:
    """`python -m perf.naive_service RUN [--rating-model RUN] --port N`: serve until killed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rating-model", type=Path, default=None, help="a rating run beside the top-N RUN_DIR")
    a = p.parse_args()
    server = serve(a.run_dir, a.port, a.threads, a.rating_model)
    print(f"naive service on 127.0.0.1:{a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
