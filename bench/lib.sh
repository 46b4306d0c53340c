# Shell functions the benchmark scripts share (sourced, not run).

# fmt N: thousands separators for whole numbers, two decimals otherwise.
fmt() {
  [[ $1 == n/a ]] && { echo n/a; return; }
  awk -v v="$1" 'BEGIN {
    if (v != int(v)) { printf "%.2f\n", v; exit }
    s = sprintf("%d", v); r = ""
    while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
    print s r }'
}
