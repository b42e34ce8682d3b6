// The stock JavaScript flagd provider (@openfeature/flagd-provider) with the OpenFeature server
// SDK, against a node's gRPC port.
//
// usage: node flagd_checks.mjs rpc|in-process PORT
//   rpc: every evaluation is a flagd.evaluation.v2 call the node answers.
//   in-process: the provider syncs the flag set over flagd.sync.v1 SyncFlags from PORT (the
//   provider's own default there is 8015) and evaluates it with @openfeature/flagd-core.
// Prints one JSON line: {"evaluations": {"name": {...}}, "split": {"user-1": "control", ...}}
// (see tests/js_clients.rs for what each must be).
import { OpenFeature } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';
import { USERS, errorRecorder, main, record } from './report.mjs';

const [mode, port] = process.argv.slice(2);
if (!['rpc', 'in-process'].includes(mode) || !Number(port)) {
  console.error('usage: node flagd_checks.mjs rpc|in-process PORT');
  process.exit(64);
}

await main(60_000, async () => {
  await OpenFeature.setProviderAndWait(
    new FlagdProvider({
      resolverType: mode,
      host: '127.0.0.1',
      port: Number(port),
      // Every answer from the node, none from the provider's cache of STATIC results.
      cache: 'disabled',
    }),
  );
  const client = OpenFeature.getClient();
  const { errors, hook } = errorRecorder();
  client.addHooks(hook);
  const user = { targetingKey: 'user-1' };
  const pro = { targetingKey: 'user-1', plan: 'pro' };
  const evaluations = {};
  const keep = async (name, details) => {
    evaluations[name] = record(await details, errors);
  };
  await keep('boolean', client.getBooleanDetails('bool-flag', true, user));
  await keep('boolean targeting match', client.getBooleanDetails('bool-flag', false, pro));
  await keep('string', client.getStringDetails('string-flag', 'code default', user));
  await keep('integer', client.getNumberDetails('int-flag', -1, user));
  await keep('float', client.getNumberDetails('float-flag', -1, user));
  await keep('object', client.getObjectDetails('object-flag', { code: 'default' }, user));
  await keep('disabled', client.getBooleanDetails('disabled-flag', false, user));
  await keep('unknown', client.getStringDetails('no-such-flag', 'code default', user));
  await keep('type mismatch', client.getBooleanDetails('string-flag', true, user));
  const split = {};
  for (const targetingKey of USERS) {
    const details = await client.getStringDetails('split-flag', 'code default', { targetingKey });
    split[targetingKey] = details.errorCode ? `error: ${details.errorCode}` : details.variant;
  }
  return { evaluations, split };
});
