"""The Kafka adapter (confluent-kafka): ``settings`` parses URLs without the driver;
``adapter`` needs ``pip install 'txmq[kafka]'``."""
