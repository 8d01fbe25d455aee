# Short docker aliases for people who SSH into swarm nodes (installed by user-data).
alias dps='docker ps --format "table {{.Names}}\t{{.Image}}\t{{.Status}}"'
alias dnodes='docker node ls'
alias dsvc='docker service ls'
alias dlogs='docker service logs --tail 100 -f'
