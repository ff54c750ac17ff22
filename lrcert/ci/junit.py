"""``lrcert check --junit-xml``: one JUnit test case per check, the form CI systems show in their
test tabs (GitHub, GitLab, Jenkins, Azure): ``<testsuites>`` holding one ``<testsuite>``; a failed
check carries ``<failure>`` (the inputs or figures that failed), one that could not run ``<error>``;
the figures go to ``<system-out>``.

>>> from pathlib import Path
>>> from lrcert.ci.checks import Outcome
>>> from lrcert.ci.config import Check
>>> text = document([Outcome(Check("mnist", Path("lrcert.toml"), Path("m.onnx"), Path("d.npy")), inputs=3,
...                          failures=["1 of 3 inputs has ε̂₂ below 0.1: inputs 2"])])
>>> '<testcase classname="lrcert.check" name="mnist"' in text and '<failure message="1 of 3 inputs' in text
True
"""

from __future__ import annotations

import datetime
import socket
from typing import Sequence
from xml.etree import ElementTree

from .checks import Outcome


def document(outcomes: Sequence[Outcome]) -> str:
    """The JUnit XML text for ``outcomes``."""
    failures = sum(o.status == "failed" for o in outcomes)
    errors = sum(o.status == "error" for o in outcomes)
    seconds = f"{sum(o.seconds for o in outcomes):.3f}"
    counts = {"tests": str(len(outcomes)), "failures": str(failures), "errors": str(errors), "time": seconds}
    root = ElementTree.Element("testsuites", {"name": "lrcert check", **counts})
    suite = ElementTree.SubElement(root, "testsuite", {
        "name": "lrcert check", **counts, "skipped": "0", "hostname": socket.gethostname(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    })
    for outcome in outcomes:
        case = ElementTree.SubElement(suite, "testcase", {
            "classname": "lrcert.check", "name": outcome.check.name, "time": f"{outcome.seconds:.3f}",
            "file": str(outcome.check.source),
        })
        if outcome.status == "error":
            ElementTree.SubElement(case, "error", {"message": outcome.error, "type": "LrcertError"}).text = outcome.error
        elif outcome.status == "failed":
            failure = ElementTree.SubElement(case, "failure", {"message": outcome.failures[0], "type": "CheckFailed"})
            failure.text = "\n".join(outcome.failures)
        facts = [f"{outcome.inputs} inputs, {outcome.check.model}", *outcome.figures]
        if outcome.guarantee:
            facts.append(f"guarantee: {outcome.guarantee}")
        ElementTree.SubElement(case, "system-out").text = "\n".join(facts)
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"
