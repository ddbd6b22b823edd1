"""The RabbitMQ adapter (pika): ``settings`` parses URLs without pika; ``adapter`` needs
``pip install 'txmq[rabbitmq]'``."""
