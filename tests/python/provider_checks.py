"""Explicit checks of a running Bunting node through the stock OpenFeature Python SDK and flagd
provider, on cluster-config/flags.json.

usage:
  provider_checks.py rpc PORT
      RPC mode (flagd.evaluation.v2): every value type, a targeting match, a disabled flag,
      FLAG_NOT_FOUND and TYPE_MISMATCH.
  provider_checks.py in-process PORT FLAG_FILE
      In-process mode (the provider syncs the definition over flagd.sync.v1 SyncFlags and evaluates
      it with flagd's own Python core): the same checks, then FLAG_FILE (the file the node serves)
      is rewritten with a changed default variant and the provider must see the change.

Prints each failure, then one line `provider checks (MODE): N passed, M failed`; exits 1 on any
failure.
"""

import json
import os
import sys
import threading
import time

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import CacheType, ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent

# How long the in-process provider may take to see a saved edit: the node polls the file every
# 50 ms and pushes at once, so this only bounds how long a broken sync can hang the run.
CHANGE_PATIENCE_S = 10.0

ABSENT = object()


class Checks:
    def __init__(self, mode):
        self.mode = mode
        self.passed = 0
        self.failures = []

    def expect(self, name, details, value=ABSENT, variant=ABSENT, reason=ABSENT, error_code=None):
        """Compares the fields given; `error_code=None` also asserts that there was no error."""
        problems = []
        if value is not ABSENT and (details.value != value or type(details.value) is not type(value)):
            problems.append(f"value {details.value!r} != {value!r}")
        if variant is not ABSENT and details.variant != variant:
            problems.append(f"variant {details.variant!r} != {variant!r}")
        if reason is not ABSENT and str(details.reason) != reason:
            problems.append(f"reason {str(details.reason)!r} != {reason!r}")
        got_code = None if details.error_code is None else str(details.error_code)
        if got_code != error_code:
            problems.append(f"error code {got_code!r} != {error_code!r} ({details.error_message})")
        self.record(name, problems)

    def record(self, name, problems):
        if problems:
            self.failures.append(f"FAIL {name}: {'; '.join(problems)}")
        else:
            self.passed += 1

    def finish(self):
        for line in self.failures:
            print(line)
        print(f"provider checks ({self.mode}): {self.passed} passed, {len(self.failures)} failed")
        return 1 if self.failures or self.passed == 0 else 0


def context(targeting_key=None, **attributes):
    return EvaluationContext(targeting_key=targeting_key, attributes=attributes)


def resolution_checks(checks, client):
    """The same expectations in both modes: the node's RPC answers and flagd's own evaluator
    running the definition the node synced must agree."""
    # boolean: the rule falls through to the default variant, or matches ($ref'd evaluator).
    checks.expect(
        "boolean default",
        client.get_boolean_details("welcome-banner", True, context()),
        value=False, variant="off", reason="DEFAULT",
    )
    checks.expect(
        "boolean targeting match",
        client.get_boolean_details("welcome-banner", False, context(email="ada@bunting.example")),
        value=True, variant="on", reason="TARGETING_MATCH",
    )
    checks.expect(
        "boolean targeting match (in list)",
        client.get_boolean_details("welcome-banner", False, context(country="NZ")),
        value=True, variant="on", reason="TARGETING_MATCH",
    )
    # string: a 50/50 fractional split on the targeting key. user-42's bucket is what the engine
    # computes in cbor mode (the node's config in tests/stock_clients.rs), the mode this Python
    # provider (0.6) uses in process; under string (the node's default) it lands elsewhere.
    checks.expect(
        "string fractional split",
        client.get_string_details("checkout-flow", "fallback", context("user-42")),
        value="one-page", variant="treatment", reason="TARGETING_MATCH",
    )
    # integer: sem_ver and == rules, and the default.
    checks.expect(
        "integer sem_ver match",
        client.get_integer_details("search-results-per-page", 0, context(appVersion="4.3.0")),
        value=50, variant="large", reason="TARGETING_MATCH",
    )
    checks.expect(
        "integer == match",
        client.get_integer_details("search-results-per-page", 0, context(appVersion="1.0.0", device="watch")),
        value=10, variant="small", reason="TARGETING_MATCH",
    )
    checks.expect(
        "integer default",
        client.get_integer_details("search-results-per-page", 0, context(appVersion="1.0.0")),
        value=25, variant="default", reason="DEFAULT",
    )
    # float: a flag without targeting is STATIC.
    checks.expect(
        "float static",
        client.get_float_details("price-multiplier", 9.5, context()),
        value=1.0, variant="standard", reason="STATIC",
    )
    # object
    checks.expect(
        "object default",
        client.get_object_details("theme", {}, context(locale="en-NZ")),
        value={"background": "#ffffff", "accent": "#1d4ed8"}, variant="light", reason="DEFAULT",
    )
    checks.expect(
        "object targeting match",
        client.get_object_details("theme", {}, context(locale="is-IS")),
        value={"background": "#0f172a", "accent": "#38bdf8"}, variant="dark", reason="TARGETING_MATCH",
    )
    # A disabled flag is not an error: reason DISABLED, and the caller's default, whichever it is.
    for default in (True, False):
        checks.expect(
            f"disabled flag keeps the caller default ({default})",
            client.get_boolean_details("legacy-reports", default, context()),
            value=default, variant=None, reason="DISABLED",
        )
    # Errors: the caller's default, reason ERROR, and flagd's error code.
    checks.expect(
        "flag not found",
        client.get_string_details("no-such-flag", "fallback", context()),
        value="fallback", reason="ERROR", error_code="FLAG_NOT_FOUND",
    )
    checks.expect(
        "type mismatch (object flag asked as boolean)",
        client.get_boolean_details("theme", True, context()),
        value=True, reason="ERROR", error_code="TYPE_MISMATCH",
    )
    checks.expect(
        "type mismatch (string flag asked as integer)",
        client.get_integer_details("checkout-flow", 7, context("user-42")),
        value=7, reason="ERROR", error_code="TYPE_MISMATCH",
    )


def rpc(port):
    checks = Checks("rpc")
    # No cache: every evaluation must reach the node (the provider would otherwise answer STATIC
    # flags from its own cache as CACHED).
    api.set_provider_and_wait(
        FlagdProvider(
            resolver_type=ResolverType.RPC, host="127.0.0.1", port=port,
            deadline_ms=5000, cache=CacheType.DISABLED,
        )
    )
    resolution_checks(checks, api.get_client())
    return checks


def in_process(port, flag_file):
    checks = Checks("in-process")
    changed = []
    seen_change = threading.Event()

    def on_change(details):
        changed.append(details.flags_changed)
        seen_change.set()

    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    api.set_provider_and_wait(
        FlagdProvider(resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1", port=port, deadline_ms=5000)
    )
    client = api.get_client()
    resolution_checks(checks, client)

    # In-process evaluations carry the definition's metadata (flag set's merged with the flag's).
    details = client.get_boolean_details("welcome-banner", False, context(email="ada@bunting.example"))
    want = {"flagSetId": "bunting-example", "version": "1", "owner": "growth"}
    got = {k: details.flag_metadata.get(k) for k in want}
    checks.record("flag metadata synced", [] if got == want else [f"metadata {got!r} != {want!r}"])

    # The change: price-multiplier's default variant moves from standard (1.0) to discount (0.85).
    before = client.get_float_details("price-multiplier", 9.5, context())
    checks.expect("before the change", before, value=1.0, variant="standard", reason="STATIC")
    seen_change.clear()
    changed.clear()
    with open(flag_file) as f:
        document = json.load(f)
    document["flags"]["price-multiplier"]["defaultVariant"] = "discount"
    # Written whole and renamed over the old file, as editors save, so the node never reads half.
    partial = flag_file + ".saving"
    with open(partial, "w") as f:
        json.dump(document, f, indent=2)
    os.replace(partial, flag_file)

    started = time.monotonic()
    after = client.get_float_details("price-multiplier", 9.5, context())
    while after.value != 0.85 and time.monotonic() - started < CHANGE_PATIENCE_S:
        time.sleep(0.05)
        after = client.get_float_details("price-multiplier", 9.5, context())
    elapsed = time.monotonic() - started
    print(f"in-process provider saw the edit after {elapsed:.2f} s")
    checks.expect(
        "after the change", after,
        value=0.85, variant="discount", reason="STATIC",
    )
    # The provider tells its application which flags changed.
    seen_change.wait(max(0.0, CHANGE_PATIENCE_S - elapsed))
    named = any("price-multiplier" in (keys or []) for keys in changed)
    checks.record(
        "configuration-changed event names the flag",
        [] if named else [f"events seen after the edit: {changed!r}"],
    )
    # Only that flag changed.
    checks.expect(
        "other flags unchanged",
        client.get_integer_details("search-results-per-page", 0, context(appVersion="4.3.0")),
        value=50, variant="large", reason="TARGETING_MATCH",
    )
    return checks


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "rpc":
        checks = rpc(port)
    elif mode == "in-process":
        checks = in_process(port, sys.argv[3])
    else:
        sys.exit(f"unknown mode {mode!r} (rpc, in-process)")
    status = checks.finish()
    api.shutdown()
    sys.exit(status)


if __name__ == "__main__":
    main()
