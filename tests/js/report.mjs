// What the check scripts share: every evaluation they make is recorded as plain JSON (the
// evaluation details the OpenFeature SDK returned, plus the class of the error the provider threw,
// which the details do not carry), and the whole record is printed as one JSON line on stdout for
// tests/js_clients.rs to assert on. The scripts judge nothing themselves.
import { OpenFeature } from '@openfeature/server-sdk';

/** A hook that remembers the error each evaluation's provider threw, by flag key. */
export function errorRecorder() {
  const errors = new Map();
  return {
    errors,
    hook: {
      error(hookContext, error) {
        errors.set(hookContext.flagKey, error?.name ?? String(error));
      },
      before(hookContext) {
        errors.delete(hookContext.flagKey);
      },
    },
  };
}

/** The fields of evaluation details the tests read. */
export function record(details, errors) {
  const entry = {
    value: details.value,
    variant: details.variant ?? null,
    reason: details.reason ?? null,
    errorCode: details.errorCode ?? null,
    errorMessage: details.errorMessage ?? null,
    flagMetadata: details.flagMetadata ?? {},
  };
  if (errors.has(details.flagKey)) {
    entry.thrown = errors.get(details.flagKey);
  }
  return entry;
}

/** Runs `body` with a deadline; prints its result as one JSON line and exits 0, or prints the
 *  failure to stderr and exits 1. Always exits: a provider's open channel must not keep Node up. */
export async function main(patienceMs, body) {
  const timer = setTimeout(() => {
    console.error(`gave up after ${patienceMs} ms`);
    process.exit(2);
  }, patienceMs);
  try {
    const result = await body();
    process.stdout.write(JSON.stringify(result) + '\n');
    clearTimeout(timer);
    await Promise.race([OpenFeature.close(), new Promise((r) => setTimeout(r, 2000))]);
    process.exit(0);
  } catch (error) {
    console.error(error?.stack ?? String(error));
    process.exit(1);
  }
}

/** The targeting keys the fractional checks bucket. */
export const USERS = Array.from({ length: 20 }, (_, i) => `user-${i + 1}`);
