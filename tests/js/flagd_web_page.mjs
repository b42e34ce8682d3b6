// The page side of web_checks.mjs for flagd: the stock flagd web provider
// (@openfeature/flagd-web-provider, Connect over fetch) under the OpenFeature web SDK, against the
// node's HTTP edge (flagd.evaluation.v1 ResolveAll and EventStream). The driver calls
// window.start(baseUrl, token?), then reads evaluations with window.evaluations() and, last, switches the
// page's context with window.changeContext().
import { OpenFeature, ProviderEvents } from '@openfeature/web-sdk';
import { FlagdWebProvider } from '@openfeature/flagd-web-provider';

const changes = [];

function record(details) {
  return {
    value: details.value,
    variant: details.variant ?? null,
    reason: details.reason ?? null,
    errorCode: details.errorCode ?? null,
    errorMessage: details.errorMessage ?? null,
  };
}

window.start = async (baseUrl, token) => {
  const url = new URL(baseUrl);
  // plan=pro matches bool-flag's targeting; user-1 lands in split-flag's treatment arm.
  await OpenFeature.setContext({ targetingKey: 'user-1', plan: 'pro' });
  OpenFeature.addHandler(ProviderEvents.ConfigurationChanged, (details) => {
    changes.push(details?.flagsChanged ?? []);
  });
  await OpenFeature.setProviderAndWait(
    new FlagdWebProvider({
      host: url.hostname,
      port: Number(url.port),
      tls: false,
      // The provider retries a failed stream forever (logging each failure as a console error,
      // which the test fails on); a short backoff keeps a retry inside the driver's patience.
      maxDelay: 1000,
      // A closed node wants the bearer token on every call: the provider's Connect interceptors
      // are its only way to add a header (fetch, so the event stream carries it too).
      interceptors: token
        ? [
            (next) => (request) => {
              request.header.set('authorization', `Bearer ${token}`);
              return next(request);
            },
          ]
        : [],
    }),
  );
};

window.evaluations = () => {
  const client = OpenFeature.getClient();
  return {
    boolean: record(client.getBooleanDetails('bool-flag', false)),
    string: record(client.getStringDetails('string-flag', 'code default')),
    integer: record(client.getNumberDetails('int-flag', -1)),
    float: record(client.getNumberDetails('float-flag', -1)),
    object: record(client.getObjectDetails('object-flag', { code: 'default' })),
    disabled: record(client.getBooleanDetails('disabled-flag', false)),
    unknown: record(client.getStringDetails('no-such-flag', 'code default')),
    'type mismatch': record(client.getNumberDetails('string-flag', -1)),
    split: record(client.getStringDetails('split-flag', 'code default')),
  };
};

// A new context for the page: the provider resolves everything again for it (ResolveAll), and the
// evaluations after that are the new context's.
window.changeContext = async () => {
  await OpenFeature.setContext({ targetingKey: 'user-1', plan: 'free' });
  return window.evaluations();
};

window.stringValue = () => OpenFeature.getClient().getStringValue('string-flag', 'code default');
window.changes = () => changes;
