"""The reference chart for head circumference against gestational age.

INTERGROWTH-21st fetal growth standards (Papageorghiou AT et al., "International standards
for fetal growth based on serial ultrasound measurements: the Fetal Growth Longitudinal
Study of the INTERGROWTH-21st Project", Lancet 2014;384:869-879), chosen because it is a
prescriptive standard from eight countries, meant for use everywhere including
low-resource settings. It publishes HC as a mean and SD that are smooth functions of exact
gestational age, for 14 to 40 weeks, and its tables give the 3rd, 5th, 10th, 50th, 90th,
95th and 97th centiles (mean + z SD). Outside 14-40 weeks it says nothing, and neither do we.

Hadlock 1984, the device's dating formula, is drawn too (`wire.dating`, which the device
computes with): Hadlock published the age's variability (about +/-2 SD in weeks), not HC
centiles, so it cannot give a 3rd-97th band.
"""

from __future__ import annotations

import math

IG_MIN_WEEKS, IG_MAX_WEEKS = 14.0, 40.0
# z of the centiles INTERGROWTH-21st tabulates (standard normal quantiles)
CENTILE_Z = {3: -1.88079, 5: -1.64485, 10: -1.28155, 50: 0.0, 90: 1.28155, 95: 1.64485,
             97: 1.88079}
REFERENCE_NAME = "INTERGROWTH-21st (Papageorghiou et al., Lancet 2014)"


def ig_hc_mean_sd(ga_weeks: float) -> tuple[float, float]:
    """INTERGROWTH-21st HC mean and SD (mm) at exact gestational age in weeks (14-40)."""
    g = float(ga_weeks)
    lg = math.log(g)
    mean = -28.2849 + 1.69267 * g ** 2 - 0.397485 * g ** 2 * lg
    sd = (1.98735 + 0.0136772 * g ** 3 - 0.00726264 * g ** 3 * lg
          + 0.000976253 * g ** 3 * lg ** 2)
    return mean, sd


def ig_hc_centile(ga_weeks: float, centile: int) -> float:
    mean, sd = ig_hc_mean_sd(ga_weeks)
    return mean + CENTILE_Z[centile] * sd


def ig_z(hc_mm: float, ga_weeks: float) -> float | None:
    """The HC's z-score against INTERGROWTH-21st at that age; None outside 14-40 weeks."""
    if ga_weeks is None or hc_mm is None or not IG_MIN_WEEKS <= ga_weeks <= IG_MAX_WEEKS:
        return None
    mean, sd = ig_hc_mean_sd(ga_weeks)
    return (hc_mm - mean) / sd
