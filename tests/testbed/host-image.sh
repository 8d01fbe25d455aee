#!/usr/bin/env bash
# Runs as root inside a fresh bed host, before the engine "boots" it: what an AMI would
# already contain. The SSH user with passwordless sudo (cloud-init's default user), sshd,
# no Debian init script for docker (the bed installs a stand-in systemctl).
#   bash -s -- USER ADDRESS <host-image.sh
set -euo pipefail
user=${1:?user} address=${2:?address}
useradd -m -s /bin/bash "$user"
install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
echo "$user ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/90-cloud-init-users
chmod 0440 /etc/sudoers.d/90-cloud-init-users
rm -f /etc/init.d/docker
mkdir -p /run/sshd
# No DNS in the bed: fail lookups at once instead of after a 20 s timeout.
echo 'nameserver 127.0.0.1' >/etc/resolv.conf
/usr/sbin/sshd -o "ListenAddress=$address" -o PidFile=/run/sshd.pid -o PasswordAuthentication=no \
  -o UseDNS=no -o LogLevel=ERROR
