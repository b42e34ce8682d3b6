"""Runs flagd's provider conformance cases against a running Bunting node through the stock
OpenFeature Python SDK and flagd provider (RPC mode, flagd.evaluation.v2).

usage: flagd_cases.py PORT CASES_JSON
Prints each failure, then one line `flagd testbed cases: N passed, M failed`; exits 1 on any failure.
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext


def parse(kind, text):
    if kind == "Boolean":
        return text == "true"
    if kind == "Integer":
        return int(text)
    if kind == "Float":
        return float(text)
    if kind == "Object":
        return json.loads(text) if isinstance(text, str) else text
    return text


def main():
    port, cases_path = int(sys.argv[1]), sys.argv[2]
    with open(cases_path) as f:
        cases = json.load(f)
    api.set_provider_and_wait(
        FlagdProvider(resolver_type=ResolverType.RPC, host="127.0.0.1", port=port, deadline_ms=5000)
    )
    client = api.get_client()
    resolvers = {
        "Boolean": client.get_boolean_details,
        "String": client.get_string_details,
        "Integer": client.get_integer_details,
        "Float": client.get_float_details,
        "Object": client.get_object_details,
    }
    passed, failures = 0, []
    for case in cases:
        attributes = dict(case.get("context") or {})
        targeting_key = attributes.pop("targetingKey", None)
        context = EvaluationContext(targeting_key=targeting_key, attributes=attributes)
        kind = case["type"]
        details = resolvers[kind](case["flag"], parse(kind, case["default"]), context)
        problems = []
        expected = parse(kind, case["value"])
        if details.value != expected:
            problems.append(f"value {details.value!r} != {expected!r}")
        if case.get("reason") and str(getattr(details.reason, "value", details.reason)) != case["reason"]:
            problems.append(f"reason {details.reason!r} != {case['reason']!r}")
        want_code = case.get("errorCode")
        got_code = getattr(details.error_code, "value", details.error_code)
        if want_code and got_code != want_code:
            problems.append(f"error code {got_code!r} != {want_code!r}")
        if want_code == "" and got_code is not None:
            problems.append(f"unexpected error {got_code!r}: {details.error_message}")
        if problems:
            failures.append(f"FAIL {case['name']}: {'; '.join(problems)}")
        else:
            passed += 1
    for line in failures:
        print(line)
    print(f"flagd testbed cases: {passed} passed, {len(failures)} failed")
    api.shutdown()
    sys.exit(1 if failures or passed == 0 else 0)


if __name__ == "__main__":
    main()
