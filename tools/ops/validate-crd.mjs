// Validates one custom resource (JSON on stdin) against its CRD's published schema, for the kinds
// kubernetes-validate has no schema for (KEDA, Prometheus Operator). Prints `ok` or
// `INVALID <reason>` and exits 1. Used by tests/ops.rs.
import { readFileSync } from 'node:fs';

const MODULES = {
  'keda.sh/v1alpha1': '@kubernetes-models/keda/keda.sh/v1alpha1',
  'monitoring.coreos.com/v1': '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1',
};

const obj = JSON.parse(readFileSync(0, 'utf8'));
const module = MODULES[obj.apiVersion];
if (!module) {
  console.log(`INVALID no schema package for apiVersion ${obj.apiVersion}`);
  process.exit(1);
}
const Kind = (await import(module))[obj.kind];
if (!Kind) {
  console.log(`INVALID no kind ${obj.kind} in ${obj.apiVersion}`);
  process.exit(1);
}
try {
  new Kind(obj).validate();
  console.log('ok');
} catch (e) {
  console.log(`INVALID ${e.message}`);
  process.exit(1);
}
