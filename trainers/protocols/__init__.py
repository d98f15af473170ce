"""Other trainers' reward protocols, served by `trustreward serve` beside OpenRLHF's `/get_reward`.

- `nemo_gym`: `POST /verify`, a NeMo Gym resources server (the `genrm_compare` cohort shape);
- `slime`: `POST /remote_rm`, slime's `--rm-type remote_rm` (per sample, and `--group-rm` groups);
- `trl_env`: no route; TRL's environment-owned reward (an async `get_reward`) backed by an in-process judge.

Per-sample routes reach the judge through `Samples` (the server's own batching and prompt groups), so
`--reward`, `--group_size`, `--group_timeout` and `--on_failure` mean the same on every route.
"""

from .nemo_gym import add_nemo_gym_routes
from .samples import Samples, rubric_labels
from .slime import add_slime_routes


def add_routes(app, samples: Samples, dependencies: list, responses: dict) -> None:
    """Register every protocol's routes on the server's app (called once by `create_app`)."""
    add_nemo_gym_routes(app, samples, dependencies, responses)
    add_slime_routes(app, samples, dependencies, responses)


__all__ = ["Samples", "add_routes", "rubric_labels"]
