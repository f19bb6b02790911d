"""Demo organisation drawn from the scenarios in the design notes (DESIGN §2).

Seeding only inserts what is absent, so it is safe to run on every start and
never overwrites an organisation's own edits. Run: ``python -m routing.demo``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from complaints_shared.mongo import create_mongo_client, service_database
from pymongo.asynchronous.database import AsyncDatabase

from routing import store
from routing.models import Branch, Department, RoutingRule, Staff
from routing.settings import RoutingSettings

DEMO_ORG = "demo"

BRANCHES = [
    ("HQ", "集团总部客户服务中心"),
    ("LZ", "兰州电信分公司"),
    ("HOSP", "市第一人民医院"),
    ("PROP", "阳光花园物业服务中心"),
    ("CEM", "祁连水泥厂"),
    ("APPL", "家电售后服务站"),
    ("HOTEL", "金城酒店"),
]

# (branch, code, name, kind, categories)
DEPARTMENTS = [
    ("HQ", "CS", "总部客户服务中心", "customer_service", ["other"]),
    ("LZ", "CS", "客户服务部", "customer_service", ["service_attitude", "other"]),
    ("LZ", "BILLING", "计费账务部", "billing", ["billing"]),
    ("LZ", "SALES", "市场营销部", "sales", ["policy"]),
    ("LZ", "NETWORK", "网络运维部", "network", ["network"]),
    ("HOSP", "PRO", "患者关系办公室", "customer_service", ["service_attitude", "other"]),
    ("HOSP", "MED", "医务科", "medical_affairs", ["medical", "safety"]),
    ("PROP", "RECEPTION", "前台接待", "customer_service", ["service_attitude", "other"]),
    ("PROP", "REPAIR", "工程维修部", "repair", ["after_sales"]),
    ("CEM", "QA", "质量技术部", "quality", ["product_quality"]),
    ("CEM", "SALES", "销售服务部", "customer_service", ["delivery", "other"]),
    ("APPL", "SERVICE", "售后服务部", "after_sales", ["after_sales", "product_quality"]),
    ("HOTEL", "FRONT", "前厅部", "customer_service", ["service_attitude", "other"]),
]

# (id, branch, department, name, role, capacity)
STAFF = [
    ("hq-zhao", "HQ", "CS", "赵敏", "agent", 30),
    ("lz-wang", "LZ", "CS", "王芳", "agent", 20),
    ("lz-li", "LZ", "CS", "李强", "agent", 20),
    ("lz-chen", "LZ", "BILLING", "陈静", "agent", 20),
    ("lz-liu", "LZ", "BILLING", "刘洋", "agent", 20),
    ("lz-zhang", "LZ", "SALES", "张伟", "agent", 20),
    ("lz-yang", "LZ", "NETWORK", "杨磊", "agent", 20),
    ("hosp-sun", "HOSP", "PRO", "孙丽", "agent", 20),
    ("hosp-zhou", "HOSP", "MED", "周医生", "department_head", 10),
    ("prop-wu", "PROP", "RECEPTION", "吴霞", "agent", 20),
    ("prop-zheng", "PROP", "REPAIR", "郑师傅", "agent", 15),
    ("cem-feng", "CEM", "QA", "冯工", "agent", 15),
    ("cem-he", "CEM", "SALES", "何经理", "agent", 15),
    ("appl-xu", "APPL", "SERVICE", "徐师傅", "agent", 15),
    ("hotel-ma", "HOTEL", "FRONT", "马经理", "team_lead", 15),
]

RULES: list[dict[str, Any]] = [
    {
        "id": "major-medical-incident",
        "name": "疑似医疗事故 / 人身伤害 → 医务科",
        "branches": ["HOSP"],
        "conditions": {"keywords_any": ["医疗事故", "死亡", "重伤", "误诊", "手术失误"]},
        "action": {"department_kind": "medical_affairs"},
    },
    {
        "id": "medical-category",
        "name": "医疗类投诉 → 医务科",
        "branches": ["HOSP"],
        "conditions": {"categories": ["medical", "safety"]},
        "action": {"department_kind": "medical_affairs"},
    },
    {
        "id": "billing-keywords",
        "name": "计费 / 欠费 / 年费 → 计费账务部",
        "conditions": {"keywords_any": ["欠费", "扣费", "话费", "账单", "年费", "多收", "billing"]},
        "action": {"department_kind": "billing"},
    },
    {
        "id": "billing-category",
        "name": "计费类投诉 → 计费账务部",
        "conditions": {"categories": ["billing"]},
        "action": {"department_kind": "billing"},
    },
    {
        "id": "mis-selling",
        "name": "捆绑销售 / 强制办理 → 市场营销部",
        "conditions": {"keywords_any": ["捆绑", "强制", "套餐", "误导"]},
        "action": {"department_kind": "sales"},
    },
    {
        "id": "network-faults",
        "name": "网络故障 → 网络运维部",
        "conditions": {"keywords_any": ["宽带", "断网", "信号", "网速"]},
        "action": {"department_kind": "network"},
    },
    {
        "id": "network-category",
        "name": "网络类投诉 → 网络运维部",
        "conditions": {"categories": ["network"]},
        "action": {"department_kind": "network"},
    },
    {
        "id": "repairs",
        "name": "维修 / 上门 → 维修或售后",
        "conditions": {"keywords_any": ["维修", "漏水", "上门", "报修"]},
        "action": {"department_kind": "repair"},
    },
    {
        "id": "product-quality",
        "name": "产品质量 → 质量技术部",
        "conditions": {"categories": ["product_quality"]},
        "action": {"department_kind": "quality"},
    },
    {
        "id": "after-sales",
        "name": "售后服务 → 售后服务部",
        "conditions": {"categories": ["after_sales", "product_quality"]},
        "action": {"department_kind": "after_sales"},
    },
    {
        "id": "branch-customer-service",
        "name": "其他投诉 → 本分支客户服务",
        "conditions": {},
        "action": {"department_kind": "customer_service"},
    },
    {
        "id": "default",
        "name": "兜底：总部客户服务中心",
        "is_default": True,
        "action": {"department_id": "HQ:CS"},
    },
]


async def _insert_absent(db: AsyncDatabase, collection: str, documents: list[dict]) -> int:
    inserted = 0
    for document in documents:
        result = await db[collection].update_one(
            {"_id": document["_id"]}, {"$setOnInsert": document}, upsert=True
        )
        inserted += int(result.upserted_id is not None)
    return inserted


async def seed_demo_org(*, db: AsyncDatabase, org: str = DEMO_ORG) -> dict[str, int]:
    """Insert the demo organisation's missing directory entries and rules."""
    branches = [
        {"_id": f"{org}:{code}", **Branch(org=org, code=code, name=name).model_dump()}
        for code, name in BRANCHES
    ]
    departments = [
        {
            "_id": f"{org}:{branch}:{code}",
            **Department(
                org=org, branch=branch, code=code, name=name, kind=kind, categories=categories
            ).model_dump(mode="json"),
        }
        for branch, code, name, kind, categories in DEPARTMENTS
    ]
    staff = [
        {
            "_id": staff_id,
            **Staff(
                id=staff_id,
                org=org,
                branch=branch,
                department=department,
                name=name,
                role=role,
                capacity=capacity,
            ).model_dump(mode="json", exclude={"id"}),
        }
        for staff_id, branch, department, name, role, capacity in STAFF
    ]
    rules = [
        {
            "_id": f"{org}:{rule['id']}",
            **RoutingRule(org=org, position=position * 10, **rule).model_dump(
                mode="json", exclude={"id"}
            ),
        }
        for position, rule in enumerate(RULES, start=1)
    ]
    await store.ensure_indexes(db=db)
    return {
        "branches": await _insert_absent(db, store.BRANCHES, branches),
        "departments": await _insert_absent(db, store.DEPARTMENTS, departments),
        "staff": await _insert_absent(db, store.STAFF, staff),
        "rules": await _insert_absent(db, store.RULES, rules),
    }


async def _main() -> None:
    settings = RoutingSettings()
    client = create_mongo_client(settings=settings)
    try:
        counts = await seed_demo_org(db=service_database(client=client, settings=settings))
        print(f"demo organisation {DEMO_ORG!r}: inserted {counts}")
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(_main())
