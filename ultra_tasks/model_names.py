"""Which model names get state of their own: a metrics label, an adaptive timeout, a latency history.

Producers choose model names (any name a route's glob matches: ``gpt-*`` takes ``gpt-anything``), and each
distinct name would otherwise add Prometheus series, an in-process timeout entry and a Redis list in every
worker, without bound. The fleet tracks the first MAX_TRACKED_MODELS distinct names it sees (one Redis set,
decided in one script, so every process agrees); a name beyond the cap folds into ``other``. Each process
remembers its answers, so a job costs no Redis round trip for a name already seen. With Redis down a name
not yet known folds into ``other``, the bounded choice.
"""

from __future__ import annotations

import threading

import redis

from ultra_tasks import keys
from ultra_tasks.redis_client import REDIS_DOWN

#: distinct model names the fleet keeps state for; beyond it they share OTHER's
MAX_TRACKED_MODELS = 200
#: the name every model beyond the cap is counted and timed under
OTHER = "other"

# KEYS[1] the set; ARGV: name, cap. 1 if the name is tracked (already, or now), else 0.
_TRACK_LUA = r"""
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class ModelNames:
    def __init__(self, client: redis.Redis, cap: int = MAX_TRACKED_MODELS) -> None:
        self.client, self.cap = client, cap
        self._track = client.register_script(_TRACK_LUA)
        self._answers: dict[str, str] = {}
        self._lock = threading.Lock()

    def tracked(self, model: str) -> str:
        """``model`` if the fleet keeps state for it, else OTHER."""
        answer = self._answers.get(model)
        if answer is not None:
            return answer
        try:
            answer = model if self._track(keys=[keys.tracked_models()], args=[model, self.cap]) else OTHER
        except REDIS_DOWN:
            return OTHER  # not remembered: asked again once Redis answers
        with self._lock:
            if len(self._answers) < 4 * self.cap:  # the folded names this process saw are bounded too
                self._answers[model] = answer
        return answer


_names: ModelNames | None = None
_names_lock = threading.Lock()


def tracked_model(model: str) -> str:
    """The process-wide ``ModelNames.tracked``."""
    global _names
    if _names is None:
        from ultra_tasks.redis_client import shared_redis

        with _names_lock:
            if _names is None:
                _names = ModelNames(shared_redis())
    return _names.tracked(model)
