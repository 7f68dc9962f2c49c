#!/usr/bin/env bash
# Prints the -ldflags that stamp a Kubernetes build with its release, as hack/lib/version.sh
# does (the same variables of k8s.io/component-base/version and k8s.io/client-go/pkg/version);
# without them every binary says v0.0.0-master, which kubectl version, the node status and the
# e2e suite's skew checks read.
#
# The module zip has no .git: the commit stands in as the first 40 hex digits of the module's
# h1 hash and the build date is the tag's time as the module proxy records it, so that the
# stamp, and the binaries, are the same on every build.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.37.2}
json=$(cd /tmp && GOWORK=off GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S_VERSION")
sum=$(sed -n 's/^\t"Sum": "h1:\(.*\)",$/\1/p' <<<"$json")
info=$(sed -n 's/^\t"Info": "\(.*\)",$/\1/p' <<<"$json")
commit=$(base64 -d <<<"$sum" | od -An -tx1 | tr -d ' \n' | cut -c1-40)
date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")
[ ${#commit} -eq 40 ] && [ -n "$date" ] || {
	echo "ldflags.sh: no hash or time for k8s.io/kubernetes@$K8S_VERSION" >&2
	exit 1
}
v=${K8S_VERSION#v}
major=${v%%.*}
minor=${v#*.}
minor=${minor%%.*}
flags=()
for kv in "gitVersion=$K8S_VERSION" "gitMajor=$major" "gitMinor=$minor" "gitTreeState=clean" \
	"gitCommit=$commit" "buildDate=$date"; do
	flags+=("-X k8s.io/client-go/pkg/version.$kv" "-X k8s.io/component-base/version.$kv")
done
echo "${flags[*]}"
