{{/* Names and labels shared by every template. */}}

{{- define "kube-dmvpn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kube-dmvpn.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kube-dmvpn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component (operator, agent). */}}
{{- define "kube-dmvpn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-dmvpn.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of one component. */}}
{{- define "kube-dmvpn.labels" -}}
helm.sh/chart: {{ include "kube-dmvpn.chart" .root }}
{{ include "kube-dmvpn.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kube-dmvpn
{{- end -}}

{{- define "kube-dmvpn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kube-dmvpn.charonImage" -}}
{{- printf "%s:%s" (default .Values.image.repository .Values.charon.image.repository) (default (default .Chart.AppVersion .Values.image.tag) .Values.charon.image.tag) -}}
{{- end -}}

{{- define "kube-dmvpn.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "kube-dmvpn.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kube-dmvpn.agentServiceAccount" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (printf "%s-agent" (include "kube-dmvpn.fullname" .)) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The CNI network configuration list (see docs/cni.md). */}}
{{- define "kube-dmvpn.conflist" -}}
{{- $dmvpn := dict "type" "dmvpn" "bridge" .Values.cni.bridge "nodeStateFile" "/run/dmvpn/node-state.json" "dataDir" "/var/lib/cni/dmvpn" -}}
{{- if not .Values.cni.hairpinMode -}}
{{- $_ := set $dmvpn "hairpinMode" false -}}
{{- end -}}
{{- $plugins := list $dmvpn -}}
{{- if .Values.cni.portmap -}}
{{- $plugins = append $plugins (dict "type" "portmap" "capabilities" (dict "portMappings" true) "snat" true) -}}
{{- end -}}
{{- if .Values.cni.bandwidth -}}
{{- $plugins = append $plugins (dict "type" "bandwidth" "capabilities" (dict "bandwidth" true)) -}}
{{- end -}}
{{- dict "cniVersion" "1.0.0" "name" "dmvpn" "plugins" $plugins | toPrettyJson -}}
{{- end -}}
