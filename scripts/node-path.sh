# Sourced by scripts/up.sh and scripts/test.sh after provisioning. On a host whose own Node.js is
# older than 20 (Debian 12's nodejs is 18), provisioning installs Node.js into /usr/local/bin: put
# it ahead in PATH when the `node` found first is older (a PATH with /usr/bin first, as cron's).
# A Node >= 20 found first (nvm, the machine image's) is left as it is.
node_path_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_path_major node)" -lt 20 ] && [ "$(node_path_major /usr/local/bin/node)" -ge 20 ]; then
  export PATH=/usr/local/bin:$PATH
  hash -r
fi
unset -f node_path_major
