"""adv: robustness evaluation on top of ncvx_core (PWCF: BFGS-SQP with constraint folding).

```python
import adv
res = adv.attack(model, x, y, "linf", eps=8/255)                  # Eq. 1, max-loss within the budget
res = adv.min_distortion(model, x, y, "l2")                       # Eq. 4 (linf: Eq. 12)
res = adv.apgd(model, x, y, "l2", eps=0.5, loss="margin")         # APGD baseline
rep = adv.evaluate(model, x, y, "linf", eps=8/255)                # robust accuracy, per attack and union
```
Every reported success is verified by :func:`adv.judge` (float64, point clipped to the box).
"""

from adv.apgd import APGDResult, apgd
from adv.api import ATTACKS, DEFAULT_RESTARTS, attack, default_restarts, evaluate, min_distortion
from adv.distances import Distance, Lp, Perceptual, classifier_features, parse_distance
from adv.folding import FOLDINGS, fold
from adv.judge import Verdict, judge
from adv.problems import MaxLossProblem, MinDistortionProblem
from adv.results import AttackResult, MinDistortionResult, Report

__all__ = [
    "attack", "min_distortion", "evaluate", "apgd", "ATTACKS", "default_restarts", "DEFAULT_RESTARTS",
    "Lp", "Perceptual", "Distance", "parse_distance", "classifier_features",
    "judge", "Verdict", "fold", "FOLDINGS",
    "AttackResult", "MinDistortionResult", "Report", "APGDResult",
    "MaxLossProblem", "MinDistortionProblem",
]
