// The page side of web_checks.mjs, bundled for the browser by esbuild: the stock OFREP web
// provider (@openfeature/ofrep-web-provider) under the OpenFeature web SDK. The driver calls
// window.start(baseUrl), then reads evaluations with window.evaluations() and window.value(...).
import { OpenFeature, ProviderEvents } from '@openfeature/web-sdk';
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';

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

window.start = async (baseUrl) => {
  await OpenFeature.setContext({ targetingKey: 'user-1' });
  OpenFeature.addHandler(ProviderEvents.ConfigurationChanged, (details) => {
    changes.push(details?.flagsChanged ?? []);
  });
  await OpenFeature.setProviderAndWait(
    new OFREPWebProvider({
      baseUrl,
      // Changes through the node's eventStreams (SSE), never a poll; nothing kept between runs.
      changeDetection: 'sse',
      cacheMode: 'disabled',
    }),
  );
};

window.evaluations = () => {
  const client = OpenFeature.getClient();
  return {
    boolean: record(client.getBooleanDetails('bool-flag', true)),
    string: record(client.getStringDetails('string-flag', 'code default')),
    integer: record(client.getNumberDetails('int-flag', -1)),
    float: record(client.getNumberDetails('float-flag', -1)),
    object: record(client.getObjectDetails('object-flag', { code: 'default' })),
    disabled: record(client.getBooleanDetails('disabled-flag', false)),
    unknown: record(client.getStringDetails('no-such-flag', 'code default')),
    split: record(client.getStringDetails('split-flag', 'code default')),
  };
};

window.stringValue = () => OpenFeature.getClient().getStringValue('string-flag', 'code default');
window.changes = () => changes;
