#!/usr/bin/env bash
# sync-crds.sh - copy the repository's generated CRDs (crds/*.yaml) into the chart
# (charts/milvus-backfill/files/crds/), from where templates/crds.yaml renders them.
#
#   sync-crds.sh           make files/crds/ an exact copy of crds/*.yaml
#   sync-crds.sh --check   exit 1 when the copy is stale (differs, is missing a file, or has
#                          an extra one), or when crds/ holds no *.yaml; change nothing
#
# crds/ itself is generated: cargo run --release -p milvus-backfill-operator -- crd > crds/...
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${CRDS_SRC:-$(cd "$HERE/../.." && pwd)/crds}
DST=$HERE/files/crds
mode=sync
case "${1:-}" in
	"") ;;
	--check) mode=check ;;
	-h | --help) sed -n '2,9p' "$0"; exit 0 ;;
	*) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
src_files=("$SRC"/*.yaml)
if [ ${#src_files[@]} -eq 0 ]; then
	echo "sync-crds.sh: no *.yaml in $SRC (generate the CRD first: cargo run --release -p milvus-backfill-operator -- crd > crds/backfills.milvusbackfill.io.yaml)" >&2
	exit 1
fi

stale=0
for f in "${src_files[@]}"; do
	name=$(basename "$f")
	if ! cmp -s "$f" "$DST/$name"; then
		stale=1
		if [ $mode = check ]; then
			if [ -e "$DST/$name" ]; then echo "stale: files/crds/$name differs from crds/$name" >&2
			else echo "stale: files/crds/$name is missing" >&2; fi
		fi
	fi
done
for f in "$DST"/*.yaml; do
	name=$(basename "$f")
	if [ ! -e "$SRC/$name" ]; then
		stale=1
		[ $mode = check ] && echo "stale: files/crds/$name has no crds/$name" >&2
	fi
done

if [ $mode = check ]; then
	if [ $stale = 1 ]; then
		echo "sync-crds.sh --check: the chart's CRD copy is stale; run charts/milvus-backfill/sync-crds.sh" >&2
		exit 1
	fi
	echo "sync-crds.sh --check: files/crds/ matches crds/ (${#src_files[@]} file(s))"
	exit 0
fi

mkdir -p "$DST"
rm -f "$DST"/*.yaml
cp "${src_files[@]}" "$DST/"
echo "sync-crds.sh: copied ${#src_files[@]} file(s) from crds/ into files/crds/"
