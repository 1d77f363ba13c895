#!/usr/bin/env bash
# Make sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) answer, starting the locally
# installed servers if they are stopped. Exits non-zero, saying which, if one cannot be had.
set -u

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # name port seconds
  local deadline=$((SECONDS + $3))
  until answers "$2"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "ensure-services: $1 did not start answering on 127.0.0.1:$2 within $3s" >&2
      return 1
    fi
    sleep 1
  done
}

status=0
if ! answers 6379; then
  if command -v redis-server >/dev/null; then
    echo "ensure-services: starting redis-server"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_port Redis 6379 30 || status=1
  else
    echo "ensure-services: Redis is not running and redis-server is not installed" >&2
    status=1
  fi
fi

if ! answers 5672; then
  if command -v rabbitmq-server >/dev/null; then
    echo "ensure-services: starting rabbitmq-server"
    rabbitmq-server -detached
    wait_port RabbitMQ 5672 120 || status=1
  else
    echo "ensure-services: RabbitMQ is not running and rabbitmq-server is not installed" >&2
    status=1
  fi
fi
if [ "$status" -eq 0 ] && command -v rabbitmqctl >/dev/null; then
  rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi
exit "$status"
