"""A PCI-style crack condition index per road segment: a simplified ASTM D6433 deduct calculation.

What ASTM D6433 (Pavement Condition Index, asphalt) does: per distress type and severity, the
density (quantity / sample-unit area x 100) gives a deduct value read from the standard's
curves; the deducts are combined into a corrected deduct value (CDV, iterating over the
number ``q`` of deducts above 2); PCI = 100 - CDV.

What this index does, and how it simplifies:

1. One distress only: linear cracking (D6433 distress 10, longitudinal & transverse), by
   length. Alligator networks (distress 1, measured by area in D6433) are counted by their
   measured crack length like linear cracks; all other distresses (potholes, rutting,
   patching, ...) are not seen by the camera and are absent, so the index describes cracking
   only.
2. Density = crack length (m) / (segment length x survey width) (m2) x 100, per severity.
3. Deduct per severity: ``DV = a + b * log10(density %)``, clamped to [0, 100], with
   coefficients that approximate the shape of the D6433 distress-10 curves (low: 3 + 9 log d,
   medium: 10 + 16 log d, high: 20 + 25 log d; e.g. low at 2.7 % -> 6.9, medium at 8.7 % ->
   25). They are a fit to a few published worked examples, not a digitisation of the
   standard's figures: rank segments with it, calibrate before reporting a PCI.
4. No CDV correction: the index is 100 - (sum of the three deducts). With one deduct above 2
   (q = 1) D6433's CDV equals that sum; with two or three the standard's correction would
   lower the CDV, so this index is never higher (more optimistic) than the PCI it imitates.

The rating classes are D6433's PCI classes.
"""

from __future__ import annotations

import math

DEDUCT_COEFFICIENTS: dict[str, tuple[float, float]] = {"low": (3.0, 9.0), "medium": (10.0, 16.0),
                                                        "high": (20.0, 25.0)}
RATINGS = ((86.0, "good"), (71.0, "satisfactory"), (56.0, "fair"), (41.0, "poor"), (26.0, "very poor"),
           (11.0, "serious"), (0.0, "failed"))
MIN_DENSITY_PCT = 0.01  # below this the curves are at zero anyway; avoids log of 0


def deduct(severity: str, density_pct: float) -> float:
    """Deduct value of linear cracking of one severity at ``density_pct`` (% of the area)."""
    if density_pct < MIN_DENSITY_PCT:
        return 0.0
    a, b = DEDUCT_COEFFICIENTS[severity]
    return min(100.0, max(0.0, a + b * math.log10(density_pct)))


def condition_index(length_by_severity_m: dict[str, float], area_m2: float) -> float:
    """100 (no cracks) .. 0; see the module docstring for what it is and is not."""
    if area_m2 <= 0:
        return 100.0
    total = sum(deduct(sev, 100.0 * length_by_severity_m.get(sev, 0.0) / area_m2) for sev in DEDUCT_COEFFICIENTS)
    return round(max(0.0, 100.0 - total), 1)


def rating(index: float) -> str:
    """D6433 PCI class of an index value."""
    for floor, name in RATINGS:
        if index >= floor:
            return name
    return "failed"
