// The stock OFREP server provider (@openfeature/ofrep-provider) with the OpenFeature server SDK,
// against a node's HTTP edge.
//
// usage: node ofrep_checks.mjs BASE_URL [TOKEN]
//   With TOKEN the provider sends `Authorization: Bearer TOKEN` through its `headers` option.
// Prints one JSON line: {"name": {value, variant, reason, errorCode, errorMessage, flagMetadata,
// thrown?}, ...} for every evaluation below (see tests/js_clients.rs for what each must be).
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';
import { errorRecorder, main, record } from './report.mjs';

const [baseUrl, token] = process.argv.slice(2);
if (!baseUrl) {
  console.error('usage: node ofrep_checks.mjs BASE_URL [TOKEN]');
  process.exit(64);
}

await main(30_000, async () => {
  const options = { baseUrl };
  if (token) {
    options.headers = [['Authorization', `Bearer ${token}`]];
  }
  await OpenFeature.setProviderAndWait(new OFREPProvider(options));
  const client = OpenFeature.getClient();
  const { errors, hook } = errorRecorder();
  client.addHooks(hook);
  const user = { targetingKey: 'user-1' };
  const pro = { targetingKey: 'user-1', plan: 'pro' };
  const out = {};
  const keep = async (name, details) => {
    out[name] = record(await details, errors);
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
  await keep('split', client.getStringDetails('split-flag', 'code default', user));
  return out;
});
