# Sourced by scripts/test and scripts/demo: make TXMQ_TEST_RABBITMQ_URL, TXMQ_TEST_KAFKA_URL,
# TXMQ_TEST_DATABASE_URL (PostgreSQL) and TXMQ_TEST_MYSQL_URL (MariaDB) point at running servers.
#
# Variables already set are used as they are. Missing brokers are started with
# `txmq brokers up --mode $TXMQ_BROKERS_MODE` (default auto: containers where a Docker
# engine can be used, else processes) and stopped again when the calling script exits;
# a broker an earlier `txmq brokers up` already runs is used and left running.

ensure_brokers() {
    local -A url_env=(
        [rabbitmq]=TXMQ_TEST_RABBITMQ_URL
        [kafka]=TXMQ_TEST_KAFKA_URL
        [postgres]=TXMQ_TEST_DATABASE_URL
        [mariadb]=TXMQ_TEST_MYSQL_URL
    )
    local only=() ours=() running broker env_lines line
    # `status` lines start with the broker and "running" (exit 1 when nothing is recorded).
    running=$("$python" -m txmq.cli brokers status 2>/dev/null | awk '$2 == "running" {print $1}' || true)
    for broker in rabbitmq kafka postgres mariadb; do
        if [[ -z "${!url_env[$broker]:-}" ]]; then
            only+=(--only "$broker")
            if ! grep -qx "$broker" <<<"$running"; then
                ours+=(--only "$broker")
            fi
        fi
    done
    ((${#only[@]})) || return 0
    echo "== brokers (${TXMQ_BROKERS_MODE:-auto})"
    if ((${#ours[@]})); then
        # Set before `up`, so brokers it started before failing on another are stopped too.
        trap 'echo "== brokers down"; "$python" -m txmq.cli brokers down '"${ours[*]}" EXIT
    fi
    env_lines=$("$python" -m txmq.cli brokers up --mode "${TXMQ_BROKERS_MODE:-auto}" --print-env "${only[@]}")
    while IFS= read -r line; do
        eval "export $line"
    done <<<"$env_lines"
}
