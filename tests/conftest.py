"""Settings for the whole test suite: Hypothesis profiles.

Two profiles, chosen by the `CI` environment variable (CI sets `CI=true`):

- `ci`: derandomized, so a run on the CI machine tries the same examples every
  time and a red build is a real failure, not an unlucky draw; `print_blob` makes a
  failure print the `@reproduce_failure` line that replays it anywhere; no
  deadline, since a loaded 2-core machine must not turn a slow example into a
  failure; no example database, so nothing left over from an earlier run changes
  what is tried. `max_examples` stays at Hypothesis' default of 100.
- `dev` (everywhere else): random examples, so local runs keep exploring; also no
  deadline, for the same reason.

A test's own `@settings(max_examples=...)` still applies under either profile.
This file is imported before any test module, which is what makes the profile the
parent of those `@settings`.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile(
    "ci", derandomize=True, print_blob=True, deadline=None, database=None, max_examples=100
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev")
