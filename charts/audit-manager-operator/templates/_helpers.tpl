{{/* The name every object of the chart carries (as manifests/ names them). */}}
{{- define "audit-manager-operator.name" -}}audit-manager-operator{{- end -}}

{{- define "audit-manager-operator.labels" -}}
app.kubernetes.io/name: audit-manager-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "audit-manager-operator.selector" -}}
app.kubernetes.io/name: audit-manager-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "audit-manager-operator.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
What the operator may do, in two parts: the rules that can only be cluster-wide, and the rules
on the objects it creates in the namespaces of its AuditManagers (a ClusterRole when it
watches every namespace, a Role in the watched one otherwise). Together they are
manifests/rbac.yaml's ClusterRole (a test compares them); docs/security.md says why each.
*/}}
{{- define "audit-manager-operator.clusterRules" -}}
# Its own resource, read everywhere: adoption checks that no other AuditManager still owns a
# retained database.
- apiGroups: ["audit.openg2p.org"]
  resources: ["auditmanagers"]
  verbs: ["get", "list", "watch", "patch"]
# The cluster's ServiceAccount issuer and keys, handed to the pods when an AuditManager trusts
# them.
- nonResourceURLs: ["/.well-known/openid-configuration", "/openid/v1/jwks"]
  verbs: ["get"]
# Whether Istio's CRDs are installed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get"]
{{- end -}}

{{- define "audit-manager-operator.namespacedRules" -}}
- apiGroups: ["audit.openg2p.org"]
  resources: ["auditmanagers/status", "auditmanagers/finalizers"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["configmaps", "secrets", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "delete"]
- apiGroups: ["networking.istio.io"]
  resources: ["virtualservices"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["security.istio.io"]
  resources: ["authorizationpolicies", "requestauthentications"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
